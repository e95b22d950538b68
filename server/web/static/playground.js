// The chat playground: pick a model, send a message, watch the answer stream in.

import { api, errorText, readEvents } from "./api.js";

const $ = (id) => document.getElementById(id);
let controller = null;

export async function loadModels(defaultModel) {
  const select = $("model");
  let names = [];
  try {
    const resp = await api("/api/tags");
    if (resp.ok) names = (await resp.json()).models.map((m) => m.name);
  } catch {
    // Ollama unreachable: the default model is still worth a try.
  }
  if (defaultModel && !names.some((n) => n === defaultModel || n === `${defaultModel}:latest`)) {
    names.unshift(defaultModel);
  }
  const previous = select.value;
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  const wanted = [previous, defaultModel, `${defaultModel}:latest`].find((n) => names.includes(n));
  if (wanted) select.value = wanted;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function send(event) {
  event.preventDefault();
  const answer = $("answer");
  const meta = $("chat-meta");
  answer.textContent = "";
  answer.classList.remove("error");
  meta.textContent = "sending…";
  setBusy(true);
  controller = new AbortController();
  try {
    const resp = await api("/api/chat-optimized", {
      method: "POST",
      signal: controller.signal,
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({
        model: $("model").value || undefined,
        messages: [{ role: "user", content: $("message").value }],
        use_cache: $("use-cache").checked,
        stream: true,
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (frame) => {
      if (frame.error) throw new Error(frame.error);
      if (frame.queued) {
        meta.textContent = `queued: position ${frame.position}, about ${seconds(frame.estimated_wait_ms)}`;
      } else if (frame.done) {
        const s = frame.stats || {};
        meta.innerHTML = "";
        meta.append(badge(frame.cached ? "hit" : "miss"));
        meta.append(` queue wait ${s.queue_ms} ms · TTFT ${s.ttft_ms} ms · total ${s.total_ms} ms · ${frame.model}`);
      } else if (frame.content) {
        if (meta.textContent.startsWith("sending") || meta.textContent.startsWith("queued")) {
          meta.textContent = "answering…";
        }
        answer.textContent += frame.content;
      }
    });
  } catch (err) {
    if (err.name === "AbortError") {
      meta.textContent = "stopped";
    } else {
      answer.classList.add("error");
      answer.textContent = err.message;
      meta.textContent = "";
    }
  } finally {
    controller = null;
    setBusy(false);
  }
}

function badge(text) {
  const span = document.createElement("span");
  span.className = `badge ${text}`;
  span.textContent = text;
  return span;
}

function seconds(ms) {
  return `${Math.max(0, Math.round(ms / 1000))} s`;
}

export function setUpPlayground() {
  $("chat-form").addEventListener("submit", send);
  $("stop").addEventListener("click", () => controller?.abort());
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("chat-form").requestSubmit();
  });
}
