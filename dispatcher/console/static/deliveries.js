// Deliveries of one webhook: filters, each delivery's attempts (responses shown as text), redeliver, and replaying
// a window with its progress.

import { api, query } from "./api.js";
import { badge, emptyRow, field, fmtTime, h, isoToLocal, localToIso, table } from "./dom.js";
import { canChange, showError, toast } from "./ui.js";

const STATES = ["pending", "leased", "held", "delivered", "failed", "cancelled"];
const KINDS = ["original", "test", "redeliver", "replay"];

function select(name, options, chosen, anyLabel) {
  return h(
    "select",
    { name },
    anyLabel ? h("option", { value: "" }, anyLabel) : null,
    options.map(([value, label]) => h("option", { value, selected: String(chosen) === String(value) }, label)),
  );
}

function attemptsTable(detail) {
  const rows = detail.attempt_log.map((a) =>
    h(
      "tr",
      {},
      h("td", { class: "num" }, String(a.number)),
      h("td", {}, fmtTime(a.started_at)),
      h("td", { class: "num" }, a.status === null ? "—" : String(a.status)),
      h("td", { class: "num" }, `${a.duration_ms} ms`),
      h("td", { class: "error-text" }, a.error ? `${a.error_class ? `${a.error_class}: ` : ""}${a.error}` : "—"),
      h("td", {}, a.response ? h("pre", { class: "response" }, a.response) : h("span", { class: "muted" }, "(empty)")),
    ),
  );
  return h(
    "div",
    { class: "attempts" },
    h("p", { class: "muted small" }, "Sent to ", h("span", { class: "mono" }, detail.request.url), ` · message id ${detail.event_id}`),
    table(`Attempts of delivery ${detail.id}`, [["#", "num"], "Started", ["Status", "num"], ["Duration", "num"], "Error", "Response (start)"], rows.length ? rows : emptyRow(6, "No attempt yet."), { class: "attempt-log" }),
  );
}

function replayPanel(webhookId) {
  const since = h("input", { type: "datetime-local", name: "replay_since", required: true, value: isoToLocal(new Date(Date.now() - 3600 * 1000)) });
  const until = h("input", { type: "datetime-local", name: "replay_until" });
  const onlyFailed = h("input", { type: "checkbox", name: "only_failed", checked: true });
  const progress = h("progress", { max: 1, value: 0, id: "replay-progress", "aria-label": "Replay progress" });
  const progressText = h("p", { id: "replay-status", "aria-live": "polite" }, "");
  const status = h("div", { class: "form-status" });
  const shown = h("div", { class: "replay-progress", hidden: true }, progress, progressText);
  const show = (r) => {
    const done = r.delivered + r.failed;
    progress.max = Math.max(1, r.deliveries_created);
    progress.value = r.state === "completed" ? progress.max : done;
    const walk = r.walked ? "" : `, ${r.events_considered} events looked at so far`;
    progressText.textContent = `Replay ${r.state}: ${done} of ${r.deliveries_created} finished (${r.delivered} delivered, ${r.failed} failed, ${r.in_progress} under way${walk}).`;
  };
  const form = h(
    "form",
    { class: "panel replay", "aria-labelledby": "replay-title" },
    h("h2", { id: "replay-title" }, "Replay a window"),
    h("p", { class: "muted" }, "Sends again, as new deliveries with the same message ids, the events of the window this webhook missed."),
    h("div", { class: "row" }, field("From", since), field("Until (empty: now)", until)),
    h("div", { class: "field" }, h("label", { class: "check" }, onlyFailed, " Only events whose last delivery did not succeed")),
    status,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Replay")),
    shown,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      const body = { since: localToIso(since.value), only_failed: onlyFailed.checked };
      if (until.value) body.until = localToIso(until.value);
      let replay = await api("POST", `/webhooks/${webhookId}/replay`, body);
      shown.hidden = false;
      show(replay);
      while (replay.state === "running" && form.isConnected) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        replay = await api("GET", `/replays/${replay.id}`);
        show(replay);
      }
      if (replay.state === "completed") toast(`Replay completed: ${replay.delivered} delivered, ${replay.failed} failed.`, replay.failed ? "error" : "ok");
    } catch (exc) {
      showError(status, exc);
    }
  });
  return form;
}

export async function deliveriesPage(main, params) {
  const webhooks = (await api("GET", "/webhook_stats")).data;
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Deliveries")));
  if (!webhooks.length) {
    main.append(h("p", {}, "No webhooks yet: deliveries are listed per webhook."));
    return;
  }
  const chosen = params.get("webhook") || String(webhooks[0].id);
  const webhook = select("webhook", webhooks.map((w) => [w.id, `${w.id}: ${w.name || w.url}`]), chosen);
  const state = select("state", STATES.map((s) => [s, s]), params.get("state") || "", "any state");
  const kind = select("kind", KINDS.map((k) => [k, k]), params.get("kind") || "", "any kind");
  const type = h("input", { type: "text", name: "type", value: params.get("type") || "", placeholder: "request.*" });
  const since = h("input", { type: "datetime-local", name: "since", value: params.get("since") || "" });
  const until = h("input", { type: "datetime-local", name: "until", value: params.get("until") || "" });
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Filters" },
    field("Webhook", webhook),
    field("State", state),
    field("Kind", kind),
    field("Event type", type),
    field("Created from", since),
    field("Created until", until),
    h("div", { class: "field end" }, h("button", { type: "submit", class: "primary" }, "Show")),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    for (const [key, control] of Object.entries({ webhook, state, kind, type, since, until })) {
      if (control.value) search.set(key, control.value);
    }
    location.hash = `#/deliveries?${search}`;
  });
  const list = h("div", { id: "delivery-list" });
  main.append(filters, list);
  if (canChange()) main.append(replayPanel(chosen));

  const tbody = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "More");
  list.append(
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "deliveries" },
        h("caption", { class: "visually-hidden" }, "Deliveries, newest first"),
        h("thead", {}, h("tr", {}, [["Created"], ["Event type"], ["Kind"], ["State"], ["Attempts", "num"], ["Last status", "num"], ["Last error"], [h("span", { class: "visually-hidden" }, "Actions")]].map(([n, c]) => h("th", { scope: "col", class: c }, n)))),
        tbody,
      ),
    ),
    more,
  );
  const filterQuery = {
    state: params.get("state"),
    kind: params.get("kind"),
    type: params.get("type"),
    since: localToIso(params.get("since")),
    until: localToIso(params.get("until")),
    limit: 25,
  };
  const rowFor = (d) => {
    const detailRow = h("tr", { class: "detail-row", hidden: true }, h("td", { colspan: 8 }));
    const toggle = h("button", { type: "button", "aria-expanded": "false", class: "small-button" }, "Attempts");
    toggle.addEventListener("click", async () => {
      const open = toggle.getAttribute("aria-expanded") === "true";
      toggle.setAttribute("aria-expanded", String(!open));
      detailRow.hidden = open;
      if (!open) {
        const cell = detailRow.firstChild;
        cell.replaceChildren(h("p", { class: "muted" }, "Loading…"));
        try {
          cell.replaceChildren(attemptsTable(await api("GET", `/deliveries/${d.id}`)));
        } catch (exc) {
          showError(cell, exc);
        }
      }
    });
    const buttons = [toggle];
    if (canChange() && d.kind !== "test") {
      buttons.push(
        h(
          "button",
          {
            type: "button",
            class: "small-button",
            onclick: async (event) => {
              event.currentTarget.disabled = true;
              try {
                const made = await api("POST", `/deliveries/${d.id}/redeliver`);
                toast(`Redelivery ${made.id.slice(0, 8)}… queued.`, "ok");
                load(true);
              } catch (exc) {
                toast(exc.message, "error");
              }
            },
          },
          "Redeliver",
        ),
      );
    }
    const row = h(
      "tr",
      { "data-delivery": d.id },
      h("td", {}, fmtTime(d.created_at)),
      h("td", { class: "mono" }, d.event_type),
      h("td", {}, d.kind),
      h("td", {}, badge(d.state), d.dead_letter ? [" ", badge("dead", "dead letter")] : null),
      h("td", { class: "num" }, `${d.attempts} / ${d.max_attempts}`),
      h("td", { class: "num" }, d.last_status === null ? "—" : String(d.last_status)),
      h("td", { class: "error-text" }, d.last_error || "—"),
      h("td", { class: "buttons" }, buttons),
    );
    return [row, detailRow];
  };
  let cursor = null;
  const load = async (fresh) => {
    if (fresh) {
      cursor = null;
      tbody.replaceChildren();
    }
    try {
      const page = await api("GET", `/webhooks/${encodeURIComponent(chosen)}/deliveries${query({ ...filterQuery, cursor })}`);
      if (fresh && !page.data.length) tbody.append(emptyRow(8, "No delivery matches."));
      for (const d of page.data) tbody.append(...rowFor(d));
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (exc) {
      showError(list, exc);
    }
  };
  more.addEventListener("click", () => load(false));
  await load(true);
}
