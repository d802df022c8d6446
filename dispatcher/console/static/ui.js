// What every page shares: who is signed in, messages, the confirmation dialog, navigation.

import { ApiError } from "./api.js";
import { add, h } from "./dom.js";

const toastBox = document.getElementById("toast");

export const session = { role: null, organisation: null };
let toastTimer = null;

export function canChange() {
  return session.role === "admin";
}

export function toast(message, kind = "info") {
  toastBox.replaceChildren(h("p", { class: `toast-${kind}` }, message));
  toastBox.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => toastBox.classList.remove("shown"), 6000);
}

export function showError(where, exc) {
  const message = exc instanceof ApiError ? exc.message : String(exc);
  where.replaceChildren(h("p", { class: "error", role: "alert" }, message));
}

// A modal yes/no question; resolves true when confirmed.
export function confirmDialog(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    add(dialog, [
      h("h2", { id: "dialog-title" }, title),
      h("p", {}, text),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: () => done(true) }, confirmLabel),
        h("button", { type: "button", autofocus: true, onclick: () => done(false) }, "Cancel"),
      ),
    ]);
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

