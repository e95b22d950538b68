// Calls to the gateway with the API key the page was given, and a reader for SSE responses
// (fetch, not EventSource: EventSource cannot send the key's header).

const KEY = "chatbot-companion.api-key";

export const apiKey = {
  get: () => localStorage.getItem(KEY) || "",
  set: (key) => localStorage.setItem(KEY, key),
  clear: () => localStorage.removeItem(KEY),
};

export class Unauthorized extends Error {}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey.get();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const resp = await fetch(path, { ...options, headers });
  if (resp.status === 401) throw new Unauthorized((await resp.json()).error);
  return resp;
}

export async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error?.message || body.error || resp.statusText;
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Call onFrame with each `data:` frame's JSON until the stream ends.
export async function readEvents(resp, onFrame) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onFrame(JSON.parse(line.slice(6)));
      }
    }
  }
}
