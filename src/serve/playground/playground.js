// quill playground: streams a completion from /v1/completions (server-sent events) into the
// page, each piece coloured by the probability it was sampled with (the TUI's bands).
//
// The server fills in CONFIG: {bands, tempMax, tempStep, topPStep, maxTokens}.
// URL parameters prefill the form (prompt, model, temperature, top_k, top_p, max_tokens,
// seed, stop); run=1 starts a generation once the models are loaded.
// For scripts (and the browser test): window.quillReady resolves when the model list is
// loaded; every generation ends with a "quill:done" event on document whose detail is
// {state: "done" | "stopped" | "error", text, finish_reason, usage}, and #output carries
// data-state = idle | running | done | stopped | error.
"use strict";

const CONFIG = __QUILL_CONFIG__;

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"),
  modelInfo: $("model-info"),
  prompt: $("prompt"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  topK: $("top-k"),
  topP: $("top-p"),
  topPValue: $("top-p-value"),
  maxTokens: $("max-tokens"),
  seed: $("seed"),
  stop: $("stop"),
  generate: $("generate"),
  stopButton: $("stop-button"),
  colours: $("colours"),
  legend: $("legend"),
  output: $("output"),
  outputPrompt: $("output-prompt"),
  outputText: $("output-text"),
  status: $("status"),
};

let controller = null;

/** The band (0 = most probable) of a piece sampled with probability p. */
function band(p) {
  for (let i = 0; i < CONFIG.bands.length; i++) {
    if (p >= CONFIG.bands[i]) return i;
  }
  return CONFIG.bands.length;
}

function setStatus(text, isError) {
  els.status.textContent = text;
  els.status.classList.toggle("error", Boolean(isError));
}

function showValues() {
  els.temperatureValue.textContent = Number(els.temperature.value).toFixed(2);
  els.topPValue.textContent = Number(els.topP.value).toFixed(2);
}

function legend() {
  const labels = CONFIG.bands.map((b) => "\u2265" + String(b).replace(/^0/, ""));
  labels.push("<" + String(CONFIG.bands[CONFIG.bands.length - 1]).replace(/^0/, ""));
  els.legend.replaceChildren(
    ...labels.map((label, i) => {
      const s = document.createElement("span");
      s.className = "p" + i;
      s.textContent = "\u25a0" + label;
      return s;
    }),
  );
}

async function loadModels() {
  const r = await fetch("/v1/models");
  if (!r.ok) throw new Error("GET /v1/models: " + r.status);
  const list = (await r.json()).data;
  els.model.replaceChildren(
    ...list.map((m) => {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.id;
      o.dataset.info = m.quill
        ? `${m.quill.tokenizer}, ${m.quill.layers} \u00d7 ${m.quill.hidden}, vocab ${m.quill.vocab}`
        : "";
      return o;
    }),
  );
  const showInfo = () => {
    const o = els.model.selectedOptions[0];
    els.modelInfo.textContent = o ? o.dataset.info : "";
  };
  els.model.addEventListener("change", showInfo);
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && list.some((m) => m.id === wanted)) els.model.value = wanted;
  showInfo();
}

function request() {
  const body = {
    model: els.model.value || undefined,
    prompt: els.prompt.value,
    temperature: Number(els.temperature.value),
    top_p: Number(els.topP.value),
    max_tokens: Number(els.maxTokens.value) || 300,
    stream: true,
  };
  if (els.topK.value !== "") body.top_k = Number(els.topK.value);
  if (els.seed.value !== "") body.seed = Number(els.seed.value);
  if (els.stop.value !== "") body.stop = els.stop.value;
  return body;
}

function finish(state, detail) {
  els.output.dataset.state = state;
  els.generate.disabled = false;
  els.stopButton.disabled = true;
  controller = null;
  document.dispatchEvent(new CustomEvent("quill:done", { detail: { state, ...detail } }));
}

/** Reads server-sent events from a fetch response; calls onData with each data field. */
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data !== "" && onData(data) === false) {
        await reader.cancel();
        return;
      }
    }
  }
}

async function generate() {
  if (controller) return;
  const body = request();
  controller = new AbortController();
  els.generate.disabled = true;
  els.stopButton.disabled = false;
  els.output.dataset.state = "running";
  els.outputPrompt.textContent = body.prompt;
  els.outputText.replaceChildren();
  setStatus("generating\u2026");
  const started = performance.now();
  let pieces = 0;
  let text = "";
  let finishReason = null;
  let usage = null;
  try {
    const r = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) {
      const j = await r.json().catch(() => null);
      throw new Error(j && j.error ? j.error.message : `HTTP ${r.status}`);
    }
    await readEvents(r, (data) => {
      if (data === "[DONE]") return false;
      const msg = JSON.parse(data);
      if (msg.error) throw new Error(msg.error.message);
      for (const c of msg.choices) {
        if (c.text) {
          const span = document.createElement("span");
          span.textContent = c.text;
          if (typeof c.prob === "number") {
            span.className = "p" + band(c.prob);
            span.title = "p = " + c.prob.toFixed(3);
          }
          els.outputText.appendChild(span);
          text += c.text;
          pieces++;
        }
        if (c.finish_reason) finishReason = c.finish_reason;
      }
      if (msg.usage) usage = msg.usage;
      return true;
    });
    const secs = (performance.now() - started) / 1000;
    const tokens = usage ? usage.completion_tokens : pieces;
    setStatus(
      `${tokens} tokens in ${secs.toFixed(2)} s (${(tokens / Math.max(secs, 1e-3)).toFixed(0)} tokens/s)` +
        (finishReason ? `, finish: ${finishReason}` : ""),
    );
    finish("done", { text, finish_reason: finishReason, usage });
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus(`stopped after ${pieces} pieces`);
      finish("stopped", { text, finish_reason: null, usage: null });
    } else {
      setStatus("error: " + e.message, true);
      finish("error", { text, error: e.message });
    }
  }
}

function fromUrl() {
  const q = new URLSearchParams(location.search);
  const set = (name, el) => {
    if (q.has(name)) el.value = q.get(name);
  };
  set("prompt", els.prompt);
  set("temperature", els.temperature);
  set("top_k", els.topK);
  set("top_p", els.topP);
  set("max_tokens", els.maxTokens);
  set("seed", els.seed);
  set("stop", els.stop);
  return q.get("run") === "1";
}

els.temperature.max = String(Math.min(2, CONFIG.tempMax));
els.temperature.step = String(CONFIG.tempStep);
els.topP.step = String(CONFIG.topPStep);
els.maxTokens.max = String(CONFIG.maxTokens);
els.temperature.addEventListener("input", showValues);
els.topP.addEventListener("input", showValues);
els.generate.addEventListener("click", generate);
els.stopButton.addEventListener("click", () => controller && controller.abort());
els.colours.addEventListener("change", () =>
  els.output.classList.toggle("coloured", els.colours.checked),
);
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate();
  }
});
const autorun = fromUrl();
showValues();
legend();
window.quillReady = loadModels().then(
  () => {
    if (autorun) generate();
  },
  (e) => setStatus("cannot load the model list: " + e.message, true),
);
