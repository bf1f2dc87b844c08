// The public REST API with the user's token (kept in sessionStorage: gone with the tab, never in a URL).
const KEY = "berth.token";

export const session = {
  token: () => sessionStorage.getItem(KEY),
  signIn: (token) => sessionStorage.setItem(KEY, token),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `the API answered ${status}`);
    this.status = status;
    this.errors = Array.isArray(problem.errors) ? problem.errors : []; // [{field, rule}]
  }
}

// One API call. `json` sends a JSON body, `yaml` a YAML one; problem+json answers become ApiErrors.
export async function api(method, path, { json, yaml, headers = {}, signal } = {}) {
  const sent = { Authorization: `Bearer ${session.token()}`, ...headers };
  let body;
  if (json !== undefined) { sent["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (yaml !== undefined) { sent["Content-Type"] = "application/yaml"; body = yaml; }
  let response;
  try {
    response = await fetch(`/v1${path}`, { method, headers: sent, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { detail: "berth's API cannot be reached: is `berth up` running?" });
  }
  if (response.status === 401) {
    session.signOut();
    window.dispatchEvent(new CustomEvent("berth:signed-out"));
  }
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch { /* not JSON: the status says enough */ }
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  const answer = await response.json();
  const etag = response.headers.get("ETag");
  if (etag && answer && typeof answer === "object") Object.defineProperty(answer, "etag", { value: etag });
  return answer;
}

// Every page of a listing that pages with `next`.
export async function all(path) {
  const items = [];
  let after = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", `${path}${sep}limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.items);
    after = page.next;
  } while (after);
  return items;
}

// GET that answers null on 404: the endpoints of features another berth version may not have
// (metrics history, alerts) show an empty state instead of an error.
export async function optional(path) {
  try { return await api("GET", path); } catch (error) {
    if (error.status === 404 && !error.errors.some((e) => e.field === "ref")) return null;
    throw error;
  }
}

// The live feed GET /v1/deployments/events, read with fetch() (EventSource cannot send the token).
// Calls onEvent(name, data) per event and onOpen() each time it is (re)subscribed, so the page can
// read its state afresh (changes while disconnected are not replayed). Returns a stop function.
export function live(onEvent, onOpen, onState = () => {}) {
  const control = new AbortController();
  (async () => {
    let delay = 1000;
    while (!control.signal.aborted) {
      try {
        const response = await fetch("/v1/deployments/events", {
          headers: { Authorization: `Bearer ${session.token()}` }, signal: control.signal,
        });
        if (response.status === 401) { session.signOut(); window.dispatchEvent(new CustomEvent("berth:signed-out")); return; }
        if (!response.ok) throw new Error(`status ${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let opened = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (!opened) { opened = true; delay = 1000; onState(true); onOpen(); }
            let name = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (data.length) onEvent(name, JSON.parse(data.join("\n")));
          }
        }
      } catch (error) {
        if (control.signal.aborted) return;
      }
      onState(false);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();
  return () => control.abort();
}
