// Webhooks: the list with the last hour's figures, one webhook with its chart and actions, the create/edit form.

import { api, catalogue } from "./api.js";
import { minuteChart } from "./chart.js";
import { badge, emptyRow, field, fmtMs, fmtPercent, fmtTime, h, table } from "./dom.js";
import { canChange, confirmDialog, navigate, showError, toast } from "./ui.js";

const REFRESH_MS = 3000;

function failingFirst(a, b) {
  const rank = (w) => (w.state === "invalid" ? 0 : w.last_hour.attempts > w.last_hour.succeeded ? 1 : 2);
  return rank(a) - rank(b) || b.id - a.id;
}

function title(w) {
  return w.name || w.url;
}

function stateBadges(w) {
  return [badge(w.state), w.paused ? [" ", badge("paused")] : null, w.verification_pending ? [" ", badge("unverified", "awaiting verification")] : null];
}

export async function webhooksPage(main) {
  const head = h("div", { class: "page-head" }, h("h1", {}, "Webhooks"));
  if (canChange()) head.append(h("a", { href: "#/webhooks/new", class: "button primary" }, "New webhook"));
  const body = h("div", {});
  main.append(head, body);
  const listed = (await api("GET", "/webhook_stats")).data.sort(failingFirst);
  const rows = listed.map((w) =>
    h(
      "tr",
      { "data-webhook": w.id },
      h("td", {}, h("a", { href: `#/webhooks/${w.id}` }, title(w)), w.name ? h("div", { class: "muted small" }, w.url) : null),
      h("td", {}, stateBadges(w)),
      h("td", { class: "error-text" }, w.last_error || "—"),
      h("td", { class: "num" }, fmtPercent(w.last_hour.success_rate)),
      h("td", { class: "num" }, `${fmtMs(w.last_hour.mean_ms)} / ${fmtMs(w.last_hour.p95_ms)}`),
      h("td", { class: "num" }, String(w.last_hour.attempts)),
    ),
  );
  body.append(
    table(
      "Webhooks, failing ones first",
      ["Webhook", "State", "Last error", ["Success (1 h)", "num"], ["Latency mean / p95 (1 h)", "num"], ["Attempts (1 h)", "num"]],
      rows.length ? rows : emptyRow(6, "No webhooks yet."),
      { class: "webhooks" },
    ),
  );
}

function secretPanel(label, secret) {
  const value = h("input", { type: "text", readonly: true, value: secret, class: "mono secret-value", "aria-label": label });
  const copied = h("span", { class: "muted", role: "status" }, "");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
    } catch {
      value.select();
      document.execCommand("copy");
    }
    copied.textContent = "Copied.";
  };
  return h(
    "section",
    { class: "panel secret", "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, label),
    h("p", {}, "Shown this once: store it in your receiver now. It signs every request (the webhook-signature header)."),
    h("div", { class: "inline" }, value, h("button", { type: "button", onclick: copy }, "Copy"), copied),
  );
}

function definition(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]),
  );
}

export async function webhookDetailPage(main, id, shownSecret) {
  const stats = await api("GET", `/webhooks/${encodeURIComponent(id)}/stats`);
  const w = stats.webhook;
  const admin = canChange();
  const result = h("div", { class: "form-status", "aria-live": "polite" });
  const reload = () => navigate(`#/webhooks/${w.id}`);

  const act = (label, run, kind) =>
    h(
      "button",
      {
        type: "button",
        class: kind || "",
        onclick: async (event) => {
          const button = event.currentTarget;
          button.disabled = true;
          result.replaceChildren();
          try {
            await run();
          } catch (exc) {
            showError(result, exc);
          } finally {
            button.disabled = false;
          }
        },
      },
      label,
    );

  const actions = h("div", { class: "actions", role: "group", "aria-label": "Webhook actions" });
  if (admin) {
    actions.append(
      h("a", { href: `#/webhooks/${w.id}/edit`, class: "button" }, "Edit"),
      act("Send test", async () => {
        result.replaceChildren(h("p", {}, "Test sent; waiting for the answer…"));
        const task = await api("POST", `/configs/webhook/${w.id}/test`, undefined, { "Ricloud-Await": "10" });
        const outcome = task.result || {};
        const text =
          task.state === "pending"
            ? "The test is still running."
            : `Test ${task.state}${outcome.status ? ` (HTTP ${outcome.status})` : ""}${outcome.error ? `: ${outcome.error}` : ""}.`;
        toast(text, task.state === "succeeded" ? "ok" : "error");
        await webhookDetailPage(main, w.id);
        main.querySelector(".form-status")?.replaceChildren(h("p", { class: task.state === "succeeded" ? "ok" : "error", id: "test-result" }, text));
      }),
      w.paused
        ? act("Resume", async () => {
            await api("POST", `/webhooks/${w.id}/resume`);
            toast("Resumed: held deliveries are released.", "ok");
            reload();
          })
        : act("Pause", async () => {
            await api("POST", `/webhooks/${w.id}/pause`);
            toast("Paused: new deliveries are held.", "ok");
            reload();
          }),
      w.state === "deactivated"
        ? act("Re-enable", async () => {
            await api("PATCH", `/webhooks/${w.id}`, { disabled: false });
            toast("Re-enabled: a test is on its way.", "ok");
            reload();
          })
        : act("Deactivate", async () => {
            if (!(await confirmDialog("Deactivate this webhook?", "It receives nothing more; its pending and held deliveries are cancelled.", "Deactivate"))) return;
            await api("PATCH", `/webhooks/${w.id}`, { disabled: true });
            toast("Deactivated.", "ok");
            reload();
          }),
      act("Rotate secret", async () => {
        if (!(await confirmDialog("Rotate the secret?", "A new secret signs from now on; the old one keeps signing beside it for a day.", "Rotate"))) return;
        const rotated = await api("POST", `/webhooks/${w.id}/rotate_secret`, {});
        await webhookDetailPage(main, w.id, rotated.secret);
      }),
      act(
        "Delete",
        async () => {
          if (!(await confirmDialog(`Delete webhook ${title(w)}?`, "It disappears from every list; its pending and held deliveries are cancelled. This cannot be undone.", "Delete"))) return;
          await api("DELETE", `/webhooks/${w.id}`);
          toast(`Webhook ${w.id} deleted.`, "ok");
          navigate("#/webhooks");
        },
        "danger",
      ),
    );
  }
  actions.append(h("a", { href: `#/deliveries?webhook=${w.id}`, class: "button" }, "Deliveries"));

  const badges = h("div", { class: "head-badges", id: "webhook-state" });
  const live = h("div", { id: "webhook-live" });
  let hours = 24;
  let latest = stats;
  const renderLive = (now) => {
    latest = now;
    const current = now.webhook;
    badges.replaceChildren(...stateBadges(current).flat(Infinity).filter(Boolean));
    const { chart } = minuteChart(now.minutes, hours);
    const span = (value, label) =>
      h(
        "button",
        {
          type: "button",
          class: "small-button",
          "aria-pressed": String(hours === value),
          onclick: () => {
            hours = value;
            renderLive(latest);
          },
        },
        label,
      );
    live.replaceChildren(
      current.last_error
        ? h("div", { class: "panel warn", id: "last-error" }, h("h2", {}, "Last error"), h("p", { class: "error-text" }, current.last_error), h("p", { class: "muted small" }, fmtTime(current.last_error_at)))
        : null,
      h(
        "section",
        { "aria-labelledby": "chart-title" },
        h("h2", { id: "chart-title" }, "Attempts per minute"),
        h(
          "div",
          { class: "chart-head" },
          h("div", { class: "legend" }, h("span", { class: "key key-ok" }), "delivered ", h("span", { class: "key key-failed" }), "failed"),
          h("div", { role: "group", "aria-label": "Chart span" }, span(24, "Last 24 hours"), span(1, "Last hour")),
        ),
        chart,
      ),
      h(
        "div",
        { class: "columns" },
        h(
          "section",
          { "aria-labelledby": "facts-title" },
          h("h2", { id: "facts-title" }, "Settings"),
          definition([
            ["Id", String(current.id)],
            ["URL", h("span", { class: "mono" }, current.url)],
            ["Event patterns", current.events.length ? current.events.join(", ") : "none (only keyed or default routing)"],
            ["Format", current.format],
            ["Static headers", current.header_names.length ? current.header_names.join(", ") : "none"],
            ["Rate limit", current.rate_limit ? `${current.rate_limit} per second` : "none"],
            ["Mail recipients", current.mail_exceptions_to || "the organisation's contacts"],
            ["Created", fmtTime(current.created_at)],
            ["Updated", fmtTime(current.updated_at)],
          ]),
        ),
        h(
          "section",
          { "aria-labelledby": "hour-title" },
          h("h2", { id: "hour-title" }, "Last hour"),
          definition([
            ["Attempts", String(current.last_hour.attempts)],
            ["Answered 2xx", String(current.last_hour.succeeded)],
            ["Success rate", fmtPercent(current.last_hour.success_rate)],
            ["Latency, mean", fmtMs(current.last_hour.mean_ms)],
            ["Latency, p95", fmtMs(current.last_hour.p95_ms)],
          ]),
        ),
      ),
    );
  };
  renderLive(stats);
  const root = h(
    "div",
    { class: "webhook-detail" },
    h("p", { class: "crumbs" }, h("a", { href: "#/webhooks" }, "Webhooks"), " / ", `Webhook ${w.id}`),
    h("div", { class: "page-head" }, h("h1", {}, title(w)), badges),
    shownSecret ? secretPanel("The new secret", shownSecret) : null,
    actions,
    result,
    live,
  );
  main.replaceChildren(root);
  document.title = `${title(w)} · dispatcher console`;
  // The state, last error, chart and figures follow the webhook while the page is shown.
  const follow = async () => {
    await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
    if (!root.isConnected) return;
    try {
      renderLive(await api("GET", `/webhooks/${w.id}/stats`));
    } catch {
      return;
    }
    follow();
  };
  follow();
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at < 1) throw new Error(`"${line.trim()}" is not a header line: write Name: value`);
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return headers;
}

export async function webhookFormPage(main, id) {
  if (!canChange()) {
    main.append(h("h1", {}, "Webhooks"), h("p", { class: "error", role: "alert" }, "A viewer cannot change webhooks."));
    return;
  }
  const [types, current] = await Promise.all([catalogue(), id ? api("GET", `/webhook_stats`).then((r) => r.data.find((w) => String(w.id) === String(id))) : null]);
  if (id && !current) throw new Error(`no webhook ${id}`);
  const chosen = new Set(current ? current.events : []);
  const name = h("input", { type: "text", name: "name", value: current?.name || "", maxlength: 200 });
  const url = h("input", { type: "url", name: "url", required: !current, placeholder: "https://example.com/hooks", class: "wide" });
  const format = h(
    "select",
    { name: "format" },
    ["standard", "4me", "ricloud"].map((f) => h("option", { value: f, selected: (current?.format || "standard") === f }, f)),
  );
  const checks = types.map((t) =>
    h(
      "li",
      {},
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "event", value: t.name, checked: chosen.has(t.name) }), " ", h("span", { class: "mono" }, t.name), t.description ? h("span", { class: "muted small" }, ` — ${t.description}`) : null),
    ),
  );
  const names = new Set(types.map((t) => t.name));
  const patterns = h("input", { type: "text", name: "patterns", class: "wide", placeholder: "request.*", value: current ? current.events.filter((e) => !names.has(e)).join(", ") : "" });
  const headers = h("textarea", { name: "headers", rows: 3, class: "wide mono", placeholder: "Authorization: Bearer …" });
  const replaceHeaders = h("input", { type: "checkbox", name: "replace_headers" });
  const rate = h("input", { type: "number", name: "rate_limit", min: "0.1", step: "any", value: current?.rate_limit ?? "" });
  const mail = h("input", { type: "text", name: "mail", class: "wide", value: current?.mail_exceptions_to || "", placeholder: "ops@example.com, oncall@example.com" });
  const status = h("div", { class: "form-status" });
  const form = h(
    "form",
    { class: "panel form", novalidate: false },
    field("Name", name, "Optional; shown in lists instead of the URL."),
    field(current ? "New URL" : "URL", url, current ? `Now ${current.url}. Leave empty to keep it; a new URL is tested before deliveries go there.` : "Where the signed POSTs go; a test is sent at once."),
    current ? null : field("Format", format, "standard: Standard Webhooks signatures; 4me and ricloud: their own bodies and headers."),
    h("fieldset", {}, h("legend", {}, "Event types"), h("ul", { class: "checks" }, checks)),
    field("More patterns", patterns, "Comma-separated prefixes such as request.* or * for every type."),
    field("Static headers", headers, current && current.header_names.length ? `One "Name: value" per line. Now: ${current.header_names.join(", ")} (values hidden).` : 'One "Name: value" per line, sent with every request.'),
    current ? h("div", { class: "field" }, h("label", { class: "check" }, replaceHeaders, " Replace the static headers with the lines above (empty: none)")) : null,
    field("Rate limit", rate, "Requests per second; empty for none."),
    field("Mail recipients", mail, "Comma-separated; failures are mailed here (else to the organisation's contacts)."),
    status,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, current ? "Save" : "Create webhook"), h("a", { href: current ? `#/webhooks/${current.id}` : "#/webhooks", class: "button" }, "Cancel")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      const events = [...form.querySelectorAll('input[name="event"]:checked')].map((box) => box.value);
      events.push(...patterns.value.split(",").map((p) => p.trim()).filter(Boolean));
      const body = { name: name.value.trim(), events, mail_exceptions_to: mail.value.trim() || null, rate_limit: rate.value ? Number(rate.value) : null };
      if (!current || replaceHeaders.checked || headers.value.trim()) body.headers = parseHeaders(headers.value);
      if (current) {
        if (url.value.trim()) body.uri = url.value.trim();
        await api("PATCH", `/webhooks/${current.id}`, body);
        toast("Saved.", "ok");
        navigate(`#/webhooks/${current.id}`);
      } else {
        body.uri = url.value.trim();
        body.format = format.value;
        const made = await api("POST", "/webhooks", body);
        history.replaceState(null, "", `#/webhooks/${made.id}`);
        await webhookDetailPage(main, made.id, made.secret);
        toast(`Webhook ${made.id} created; its test is on its way.`, "ok");
      }
    } catch (exc) {
      showError(status, exc);
    }
  });
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/webhooks" }, "Webhooks"), " / ", current ? `Webhook ${current.id}` : "New"),
    h("h1", {}, current ? `Edit ${title(current)}` : "New webhook"),
    form,
  );
}
