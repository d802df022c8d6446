// The documented JSON API, called with the session cookie; changes carry the session's CSRF token.

let csrfToken = null;
let unauthorized = () => {};

export function setSession(token) {
  csrfToken = token;
}

export function onUnauthorized(handler) {
  unauthorized = handler;
}

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

export async function api(method, path, body, headers = {}) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET" && method !== "HEAD" && csrfToken) options.headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (exc) {
    throw new ApiError(0, `the daemon did not answer (${exc.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let field = null;
    if (data && data.error && typeof data.error === "object") {
      message = data.error.message || message;
      field = data.error.field;
    } else if (data && typeof data.error === "string") {
      message = data.message || data.error;
      field = Object.keys(data.params || {})[0] || null;
    }
    if (response.status === 401 && !path.startsWith("/console/session")) unauthorized();
    throw new ApiError(response.status, message, field);
  }
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Every event type of the catalogue (the list is paged by name).
export async function catalogue() {
  const names = [];
  let cursor = null;
  do {
    const page = await api("GET", `/event_types${query({ limit: 100, cursor })}`);
    names.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return names;
}
