// The overview: the organisation's queue and webhooks, refreshed every few seconds while it is shown.

import { api } from "./api.js";
import { badge, emptyRow, fmtAge, fmtTime, h, table } from "./dom.js";
import { showError } from "./ui.js";

const REFRESH_MS = 3000;

function stat(label, value, note, id) {
  return h(
    "div",
    { class: "stat", id },
    h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value" }, String(value)),
    note ? h("div", { class: "stat-note" }, note) : null,
  );
}

function render(body, status, names) {
  const d = status.deliveries;
  const webhooks = status.webhooks;
  const failingRows = status.failing.map((w) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/webhooks/${w.id}` }, names.get(w.id) || `Webhook ${w.id}`)),
      h("td", {}, badge(w.state), w.paused ? [" ", badge("paused")] : null),
      h("td", { class: "error-text" }, w.last_error || "—"),
      h("td", { class: "num" }, String(w.failures_last_hour)),
      h("td", { class: "num" }, String(w.failure_count)),
      h("td", {}, fmtTime(w.oldest_waiting_since)),
    ),
  );
  body.replaceChildren(
    h("h2", {}, "Queue"),
    h(
      "div",
      { class: "stats" },
      stat("Pending", d.pending ?? 0, null, "stat-pending"),
      stat("In flight", d.leased ?? 0, null, "stat-leased"),
      stat("Held", status.held, "invalid or paused webhooks", "stat-held"),
      stat("Dead letters", status.dead_letters, "replay or redeliver them", "stat-dead"),
      stat("Delivered", d.delivered ?? 0, null, "stat-delivered"),
      stat("Cancelled", d.cancelled ?? 0, null, "stat-cancelled"),
    ),
    h(
      "div",
      { class: "stats" },
      stat("Oldest pending", fmtAge(status.oldest_pending_seconds), "waiting since due", "stat-oldest"),
      stat("Delivered / min", status.delivered_last_minute, "attempts answered 2xx, last minute", "stat-rate-ok"),
      stat("Failed / min", status.failed_last_minute, "other attempts, last minute", "stat-rate-failed"),
      stat("Unrouted events", status.unrouted_events, status.unrouted_events ? `oldest ${fmtAge(status.oldest_unrouted_seconds)}` : null, "stat-unrouted"),
    ),
    h("h2", {}, "Webhooks"),
    h(
      "div",
      { class: "stats" },
      ["valid", "new", "invalid", "deactivated"].map((state) => stat(state[0].toUpperCase() + state.slice(1), webhooks[state] ?? 0, null, `stat-webhooks-${state}`)),
      stat("Paused", status.paused_webhooks, null, "stat-webhooks-paused"),
    ),
    h("h2", { id: "failing-title" }, "Failing webhooks"),
    table(
      "Failing webhooks, invalid ones first",
      ["Webhook", "State", "Last error", ["Failures (1 h)", "num"], ["In a row", "num"], "Waiting since"],
      failingRows.length ? failingRows : emptyRow(6, "No webhook is failing."),
      { class: "failing" },
    ),
  );
}

export async function overviewPage(main) {
  const updated = h("p", { class: "muted updated", "aria-live": "off" }, "");
  const body = h("div", { id: "overview" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Overview"), updated), body);
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const [status, webhooks] = await Promise.all([api("GET", "/status"), api("GET", "/webhook_stats")]);
      if (stopped) return;
      render(body, status, new Map(webhooks.data.map((w) => [w.id, w.name || w.url])));
      updated.textContent = `Updated ${fmtTime(new Date().toISOString())}, every ${REFRESH_MS / 1000} s`;
    } catch (exc) {
      if (!stopped) showError(body, exc);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
