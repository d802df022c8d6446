// Events: search by id, type and window; one event with its deliveries; emitting one. The event type catalogue.

import { api, catalogue, query } from "./api.js";
import { badge, emptyRow, field, fmtTime, h, localToIso, table } from "./dom.js";
import { canChange, showError, toast } from "./ui.js";

// Event ids are UUIDv7, ordered by creation: the smallest id of a millisecond bounds a window from above.
function idBefore(iso) {
  const hex = new Date(iso).getTime().toString(16).padStart(12, "0");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-7000-8000-000000000000`;
}

async function showEvent(box, id) {
  box.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const [event, deliveries] = await Promise.all([api("GET", `/events/${encodeURIComponent(id)}`), api("GET", `/events/${encodeURIComponent(id)}/deliveries?limit=100`)]);
    const rows = deliveries.data.map((d) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/deliveries?webhook=${d.webhook_id}` }, `Webhook ${d.webhook_id}`)),
        h("td", {}, d.kind),
        h("td", {}, badge(d.state)),
        h("td", { class: "num" }, String(d.attempts)),
        h("td", { class: "num" }, d.last_status === null ? "—" : String(d.last_status)),
        h("td", { class: "error-text" }, d.last_error || "—"),
      ),
    );
    box.replaceChildren(
      h("h2", { id: "event-title" }, `Event ${event.id}`),
      h("dl", { class: "facts" }, h("dt", {}, "Type"), h("dd", { class: "mono" }, `${event.type}.${event.action}`), h("dt", {}, "State"), h("dd", {}, badge(event.state)), h("dt", {}, "Created"), h("dd", {}, fmtTime(event.date_created))),
      h("h3", {}, "Payload"),
      h("pre", { class: "response" }, JSON.stringify(event.data, null, 2)),
      h("h3", {}, "Deliveries"),
      table(`Deliveries of event ${event.id}`, ["Webhook", "Kind", "State", ["Attempts", "num"], ["Last status", "num"], "Last error"], rows.length ? rows : emptyRow(6, "No delivery: no webhook matched."), { class: "event-deliveries" }),
    );
  } catch (exc) {
    showError(box, exc);
  }
}

function emitForm(types, onEmitted) {
  const type = h("select", { name: "emit_type" }, types.map((t) => h("option", { value: t.name, selected: t.name === "request.create" }, t.name)));
  const payload = h("textarea", { name: "payload", rows: 3, class: "wide mono" }, '{"id": 1}');
  const status = h("div", { class: "form-status" });
  const form = h(
    "form",
    { class: "panel", "aria-labelledby": "emit-title" },
    h("h2", { id: "emit-title" }, "Emit an event"),
    h("div", { class: "row" }, field("Type of the new event", type), field("Payload (JSON)", payload)),
    status,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Emit")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      let data;
      try {
        data = payload.value.trim() ? JSON.parse(payload.value) : {};
      } catch (exc) {
        throw new Error(`the payload is not JSON: ${exc.message}`);
      }
      const made = await api("POST", "/events", { type: type.value, payload: data });
      toast(`Event ${made.id} emitted.`, "ok");
      onEmitted(made.id);
    } catch (exc) {
      showError(status, exc);
    }
  });
  return form;
}

export async function eventsPage(main, params) {
  const types = await catalogue();
  const id = h("input", { type: "text", name: "id", value: params.get("id") || "", class: "mono", placeholder: "0191…" });
  const type = h("select", { name: "type" }, h("option", { value: "" }, "any type"), types.map((t) => h("option", { value: t.name, selected: params.get("type") === t.name }, t.name)));
  const since = h("input", { type: "datetime-local", name: "since", value: params.get("since") || "" });
  const until = h("input", { type: "datetime-local", name: "until", value: params.get("until") || "" });
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Search events" },
    field("Event id", id),
    field("Type", type),
    field("Created from", since),
    field("Created until", until),
    h("div", { class: "field end" }, h("button", { type: "submit", class: "primary" }, "Search")),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    for (const [key, control] of Object.entries({ id, type, since, until })) if (control.value.trim()) search.set(key, control.value.trim());
    location.hash = `#/events?${search}`;
  });
  const detail = h("section", { class: "event-detail", "aria-live": "polite" });
  const list = h("div", {});
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Events")), filters);
  if (canChange()) main.append(emitForm(types, (eventId) => (location.hash = `#/events?id=${eventId}`)));
  main.append(detail, list);

  if (params.get("id")) {
    await showEvent(detail, params.get("id"));
    return;
  }
  const [prefix, ...rest] = (params.get("type") || "").split(".");
  const sinceIso = localToIso(params.get("since"));
  const untilIso = localToIso(params.get("until"));
  const found = [];
  let after = untilIso ? idBefore(untilIso) : null;
  let more = false;
  for (let pages = 0; pages < 5 && found.length < 50; pages += 1) {
    const page = await api("GET", `/events${query({ type: prefix, action: rest.join("."), limit: 100, starting_after: after })}`);
    let done = !page.has_more;
    for (const e of page.data) {
      if (sinceIso && e.date_created < sinceIso) {
        done = true;
        break;
      }
      found.push(e);
    }
    after = page.data.length ? page.data[page.data.length - 1].id : after;
    if (done) break;
    more = true;
  }
  const rows = found.slice(0, 50).map((e) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/events?id=${e.id}`, class: "mono" }, e.id)),
      h("td", { class: "mono" }, `${e.type}.${e.action}`),
      h("td", {}, badge(e.state)),
      h("td", { class: "num" }, String(e.retries)),
      h("td", {}, fmtTime(e.date_created)),
    ),
  );
  list.append(
    table("Events, newest first", ["Id", "Type", "State", ["Retries", "num"], "Created"], rows.length ? rows : emptyRow(5, "No event matches."), { class: "events" }),
    more || found.length > 50 ? h("p", { class: "muted" }, "Showing the newest 50: narrow the window to see older ones.") : null,
  );
}

export async function eventTypesPage(main) {
  const types = await catalogue();
  const rows = types.map((t) => h("tr", {}, h("td", { class: "mono" }, t.name), h("td", {}, t.description || "—"), h("td", {}, t.source), h("td", {}, fmtTime(t.created_at))));
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Event types")));
  if (canChange()) {
    const name = h("input", { type: "text", name: "name", required: true, placeholder: "invoice.paid", class: "mono" });
    const description = h("input", { type: "text", name: "description", class: "wide" });
    const status = h("div", { class: "form-status" });
    const form = h(
      "form",
      { class: "panel", "aria-labelledby": "add-type-title" },
      h("h2", { id: "add-type-title" }, "Add an event type"),
      h("div", { class: "row" }, field("Name", name, "Dotted, e.g. invoice.paid; usable at once everywhere."), field("Description", description)),
      status,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add")),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.replaceChildren();
      try {
        const made = await api("POST", "/event_types", { name: name.value.trim(), description: description.value.trim() });
        toast(`Event type ${made.name} added.`, "ok");
        main.replaceChildren();
        await eventTypesPage(main);
      } catch (exc) {
        showError(status, exc);
      }
    });
    main.append(form);
  }
  main.append(table("The event type catalogue", ["Name", "Description", "Source", "Added"], rows.length ? rows : emptyRow(4, "The catalogue is empty."), { class: "event-types" }));
}
