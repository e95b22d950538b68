// The web dashboard: reads the gateway's feed (one snapshot a second) and renders it.

import { api, apiKey, errorText, readEvents, Unauthorized } from "./api.js";
import { drawChart, History } from "./charts.js";
import { loadModels, setUpPlayground } from "./playground.js";

const $ = (id) => document.getElementById(id);
const history = { rps: new History(), hit: new History(), waiting: new History(), active: new History() };
const totals = []; // [seconds, requests_total] for requests per second over the last 10 s
const lookups = []; // [seconds, hits, misses] for the hit rate over the last minute
let latest = null;
let modelsFor = null;

function text(id, value) {
  $(id).textContent = value;
}

function mb(bytes) {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 2 ** 20).toFixed(1)} MB`;
}

function ms(value) {
  if (value == null) return "–";
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`;
}

function percent(rate) {
  return `${Math.round(rate * 100)} %`;
}

function rate(now, total) {
  totals.push([now, total]);
  while (totals.length > 2 && now - totals[0][0] > 10) totals.shift();
  const [t0, n0] = totals[0];
  return now > t0 && total >= n0 ? (total - n0) / (now - t0) : 0;
}

function recentHitRate(now, cache) {
  lookups.push([now, cache.hits, cache.misses]);
  while (lookups.length > 2 && now - lookups[0][0] > 60) lookups.shift();
  const hits = cache.hits - lookups[0][1];
  const misses = cache.misses - lookups[0][2];
  if (hits < 0 || misses < 0) lookups.length = 0; // the counters were reset
  return hits + misses > 0 ? hits / (hits + misses) : cache.hit_rate;
}

// The cache tiers behind RAM (response_cache.tiers): "disk up · 40 · Redis down", reasons on hover.
const TIER_LABELS = { memory: "RAM", sqlite: "disk", redis: "Redis" };

function tierLabel(name) {
  return TIER_LABELS[name] || name;
}

function renderTiers(tiers) {
  const el = $("t-cache-tiers");
  const behind = Object.entries(tiers || {}).filter(([name]) => name !== "memory");
  el.hidden = behind.length === 0;
  el.textContent = behind
    .map(([name, t]) => `${tierLabel(name)} ${t.state}${t.state === "up" ? ` · ${t.entries} · ${t.hits} hits` : ""}`)
    .join(" · ");
  el.className = behind.some(([, t]) => t.state === "down") ? "tiers bad" : "tiers";
  el.title = Object.entries(tiers || {})
    .map(([name, t]) => `${tierLabel(name)}: ${t.state}${t.reason ? ` (${t.reason})` : ""}, ${t.entries} entries, ${t.hits} hits`)
    .join("\n");
}

function flushedText(tiers) {
  const parts = Object.entries(tiers || {}).map(([name, n]) => `${tierLabel(name)} ${n}`);
  return `Flushed: ${parts.join(", ")}`;
}

function render(snap) {
  latest = snap;
  const now = performance.now() / 1000;
  const cache = snap.response_cache;
  const queue = snap.queue;
  const rps = rate(now, snap.requests_total);
  text("t-hit", percent(cache.hit_rate));
  text("t-hit-sub", `${cache.hits} hits · ${cache.misses} misses`);
  text("t-cache", `${cache.entries} entries`);
  text("t-cache-sub", `${mb(cache.size_bytes)} of ${cache.max_size_mb} MB`);
  renderTiers(cache.tiers);
  text("t-queue", `${queue.waiting} waiting · ${queue.active} active`);
  text("t-queue-sub", `max ${queue.max_concurrent} at once · ${queue.completed} completed`);
  text("t-mem", `${snap.memory.rss_mb} MB`);
  text("t-mem-sub", `up ${Math.round(snap.uptime_seconds / 60)} min`);
  text("t-rps", rps.toFixed(rps < 10 ? 1 : 0));
  text("t-rps-sub", `${snap.requests_total} requests in all`);
  const ollama = snap.ollama;
  text("t-ollama", ollama.reachable ? `up${ollama.version ? ` · ${ollama.version}` : ""}` : "unreachable");
  $("t-ollama").className = ollama.reachable ? "ok" : "bad";
  text("t-ollama-sub", `model ${ollama.model}`);

  history.rps.push(rps);
  history.hit.push(recentHitRate(now, cache));
  history.waiting.push(queue.waiting);
  history.active.push(queue.active);
  drawCharts();
  renderHosts(snap.hosts || []);
  renderQueue(snap.queue_entries);
  renderRecent(snap.recent);
  const viewer = snap.viewer;
  text("viewer", apiKey.get() ? `key: ${viewer.name}${viewer.admin ? " (admin)" : ""}` : "");
  $("flush").hidden = !viewer.admin;
  if (modelsFor !== ollama.model) {
    modelsFor = ollama.model;
    loadModels(ollama.model);
  }
}

function drawCharts() {
  drawChart($("c-rps"), [{ cls: "s1", points: history.rps.points }], { format: (v) => v.toFixed(1) });
  drawChart($("c-hit"), [{ cls: "s2", points: history.hit.points }], { max: 1, format: percent });
  drawChart($("c-queue"), [
    { cls: "s3", points: history.waiting.points },
    { cls: "s1", points: history.active.points },
  ]);
}

function cell(row, value, className) {
  const td = row.insertCell();
  if (value instanceof Node) td.append(value);
  else td.textContent = value;
  if (className) td.className = className;
  return td;
}

function names(list) {
  return Array.isArray(list) ? list : [];
}

// One row a host: where it is, whether it answers (and why not), its load and its models.
function renderHosts(hosts) {
  const body = $("hosts").tBodies[0];
  body.replaceChildren();
  for (const h of hosts) {
    const row = body.insertRow();
    row.dataset.url = h.url;
    cell(row, h.url, "url");
    const state = document.createElement("span");
    state.className = `badge ${h.state}`;
    state.textContent = h.state;
    const stateCell = cell(row, state, "state");
    if (h.state !== "up" && h.last_error) {
      const why = document.createElement("small");
      why.className = "bad error-text";
      why.textContent = ` ${h.last_error}`;
      stateCell.append(why);
    }
    cell(row, `${h.running} / ${h.max_concurrent}`, "running");
    const installed = names(h.models);
    const models = cell(row, `${installed.length} installed`, "models");
    models.title = installed.join("\n");
    const loaded = names(h.loaded);
    cell(row, loaded.length ? loaded.join(", ") : "none", "wide loaded");
  }
}

function renderQueue(entries) {
  const body = $("queue").tBodies[0];
  body.replaceChildren();
  for (const e of entries) {
    const row = body.insertRow();
    row.dataset.requestId = e.request_id;
    cell(row, e.request_id, "id");
    cell(row, e.user, "wide");
    cell(row, e.status);
    cell(row, e.position || "–");
    cell(row, e.position ? ms(e.estimated_wait_ms) : "–");
    cell(row, ms(e.waited_ms), "wide");
    const button = document.createElement("button");
    button.textContent = "Cancel";
    button.className = "cancel";
    button.addEventListener("click", () => cancel(e.request_id, button));
    cell(row, button);
  }
  $("queue").hidden = entries.length === 0;
  $("queue-empty").hidden = entries.length > 0;
}

async function cancel(requestId, button) {
  button.disabled = true;
  const resp = await api(`/api/chat-queue?requestId=${encodeURIComponent(requestId)}`, { method: "DELETE" });
  if (!resp.ok) alert(`Could not cancel ${requestId}: ${await errorText(resp)}`);
}

function renderRecent(rows) {
  const body = $("recent").tBodies[0];
  body.replaceChildren();
  for (const r of rows.slice(-20).reverse()) {
    const row = body.insertRow();
    cell(row, new Date(r.time * 1000).toLocaleTimeString(), "wide");
    cell(row, r.request_id, "id");
    cell(row, r.endpoint, "wide");
    cell(row, r.model);
    const badge = document.createElement("span");
    badge.className = `badge ${r.cached ? "hit" : "miss"}`;
    badge.textContent = r.cached ? "hit" : "miss";
    cell(row, badge);
    cell(row, ms(r.queue_ms), "wide");
    cell(row, ms(r.ttft_ms));
    cell(row, ms(r.total_ms));
    cell(row, r.tokens, "wide");
    cell(row, r.status, r.status === "ok" ? "" : "bad");
  }
}

function setStatus(label, cls) {
  const status = $("status");
  status.textContent = label;
  status.className = `pill ${cls}`;
}

function askForKey(message) {
  $("key-form").hidden = false;
  text("key-error", message || "");
  $("key-input").focus();
}

// The feed: reconnect after a failure, until a key is needed.
async function follow() {
  for (;;) {
    try {
      const resp = await api("/api/dashboard/feed", { headers: { Accept: "text/event-stream" } });
      if (!resp.ok) throw new Error(await errorText(resp));
      $("key-form").hidden = true;
      $("forget-key").hidden = !apiKey.get();
      setStatus("live", "ok");
      await readEvents(resp, render);
    } catch (err) {
      if (err instanceof Unauthorized) {
        setStatus("needs a key", "bad");
        askForKey(apiKey.get() ? err.message : "");
        return;
      }
    }
    setStatus("reconnecting…", "bad");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function setUp() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set($("key-input").value.trim());
    $("key-input").value = "";
    follow();
  });
  $("forget-key").addEventListener("click", () => {
    apiKey.clear();
    location.reload();
  });
  $("flush").addEventListener("click", async () => {
    const entries = latest ? latest.response_cache.entries : 0;
    if (!confirm(`Flush the cache? Its ${entries} entries will be gone.`)) return;
    const resp = await api("/api/cache-stats", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ action: "clear" }),
    });
    if (!resp.ok) alert(`Could not flush the cache: ${await errorText(resp)}`);
    else text("flush-result", flushedText((await resp.json()).tiers));
  });
  window.addEventListener("resize", drawCharts);
  setUpPlayground();
  follow();
}

setUp();
