// The console's shell: the session, the navigation and the router (#/page/...?filters).

import { api, onUnauthorized, setSession } from "./api.js";
import { field, h } from "./dom.js";
import { deliveriesPage } from "./deliveries.js";
import { eventsPage, eventTypesPage } from "./events.js";
import { overviewPage } from "./overview.js";
import { session, showError } from "./ui.js";
import { webhookDetailPage, webhookFormPage, webhooksPage } from "./webhooks.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let cleanup = null;

function parseHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "overview";
  const [path, search] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(search || "") };
}

function pageFor(parts) {
  const [name, id, sub] = parts;
  switch (name) {
    case "overview":
      return ["overview", overviewPage];
    case "webhooks":
      if (id === "new") return ["webhooks", (m) => webhookFormPage(m, null)];
      if (id && sub === "edit") return ["webhooks", (m) => webhookFormPage(m, id)];
      if (id) return ["webhooks", (m) => webhookDetailPage(m, id)];
      return ["webhooks", webhooksPage];
    case "deliveries":
      return ["deliveries", deliveriesPage];
    case "events":
      return ["events", eventsPage];
    case "event-types":
      return ["event-types", eventTypesPage];
    default:
      return ["overview", overviewPage];
  }
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // the skip link
  if (cleanup) cleanup();
  cleanup = null;
  if (!session.role) {
    signInPage();
    return;
  }
  const { parts, params } = parseHash();
  const [name, render] = pageFor(parts);
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  try {
    cleanup = (await render(main, params)) || null;
  } catch (exc) {
    showError(main, exc);
  }
  const heading = main.querySelector("h1");
  if (heading) document.title = `${heading.textContent} · dispatcher console`;
}

function showSession() {
  nav.hidden = !session.role;
  if (!session.role) {
    who.replaceChildren();
    return;
  }
  who.replaceChildren(
    h("span", { class: "who-text" }, h("span", { class: "org" }, session.organisation), " · ", session.role),
    h("button", { type: "button", class: "link-button", onclick: signOut }, "Sign out"),
  );
}

function signInPage(message) {
  nav.hidden = true;
  who.replaceChildren();
  const input = h("input", { type: "password", name: "token", required: true, autocomplete: "off", spellcheck: "false" });
  const status = h("div", { class: "form-status" });
  if (message) status.append(h("p", { class: "error", role: "alert" }, message));
  const form = h(
    "form",
    { class: "panel signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", {}, "Sign in with an admin or viewer API token of your organisation (dispatcher token create)."),
    field("API token", input, "Kept in an HttpOnly cookie for this browser session only."),
    status,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      const answer = await api("POST", "/console/session", { token: input.value });
      startSession(answer);
      if (!location.hash.startsWith("#/")) location.hash = "#/overview";
      else route();
    } catch (exc) {
      showError(status, exc);
      input.focus();
    }
  });
  main.replaceChildren(form);
  document.title = "Sign in · dispatcher console";
  input.focus();
}

function startSession(answer) {
  session.role = answer.role;
  session.organisation = answer.organisation;
  setSession(answer.csrf_token);
  showSession();
}

async function signOut() {
  try {
    await api("DELETE", "/console/session");
  } catch {
    // the cookie may be gone already
  }
  session.role = null;
  session.organisation = null;
  setSession(null);
  if (cleanup) cleanup();
  cleanup = null;
  signInPage();
}

onUnauthorized(() => {
  if (!session.role) return;
  session.role = null;
  setSession(null);
  if (cleanup) cleanup();
  cleanup = null;
  signInPage("Your session has ended: sign in again.");
});

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", route);

(async () => {
  try {
    startSession(await api("GET", "/console/session"));
  } catch {
    session.role = null;
  }
  route();
})();
