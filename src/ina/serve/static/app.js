// The ina serve web UI: chat with streaming, and a compare view (one prompt, several models side by side).
// Plain JavaScript, no dependencies: it talks to the same server's OpenAI-compatible API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], history: [], chatAbort: null };

function apiKey() {
  return $("api-key").value.trim();
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

function settings() {
  const body = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top-p").value),
    max_tokens: parseInt($("max-tokens").value, 10),
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  return body;
}

async function errorText(response) {
  try {
    const data = await response.json();
    return data.error ? data.error.message : JSON.stringify(data);
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

// POST a streaming chat completion; calls onText(piece) for every piece of text as it arrives.
async function streamChat(model, messages, onText, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ model, messages, stream: true, ...settings() }),
    signal,
  });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onText(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return finish;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("status").textContent = await errorText(response);
    $("status").className = "status error";
    return;
  }
  const data = await response.json();
  state.models = data.data;
  const select = $("model-select");
  const previous = select.value;
  select.replaceChildren();
  const checks = $("compare-models");
  checks.querySelectorAll("label").forEach((l) => l.remove());
  for (const model of state.models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.parent ? `${model.id} (adapter)` : `${model.id} (base)`;
    select.appendChild(option);
    // Model ids come from the operator (--base_model_id, folder names): text only, never HTML.
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = model.id;
    const name = document.createElement("span");
    name.textContent = model.id;
    label.append(box, " ", name);
    checks.appendChild(label);
  }
  if (previous && state.models.some((m) => m.id === previous)) select.value = previous;
  else if (state.models.length > 1) select.value = state.models[1].id;
  $("status").textContent = `${state.models.length} models`;
  $("status").className = "status ok";
}

async function loadLimits() {
  try {
    const health = await (await fetch("/health")).json();
    if (health.max_tokens_cap) {
      $("max-tokens").max = health.max_tokens_cap;
      if (parseInt($("max-tokens").value, 10) > health.max_tokens_cap) $("max-tokens").value = health.max_tokens_cap;
      showValue("max-tokens", 0);
    }
  } catch (_) {
    /* the defaults stay */
  }
}

// ------------------------------------------------------------------ chat

function addMessage(role, text, model) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : model;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return body;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.chatAbort) return;
  const model = $("model-select").value;
  $("chat-input").value = "";
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const target = addMessage("assistant", "", model);
  target.parentElement.classList.add("streaming");
  state.chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  let answer = "";
  try {
    await streamChat(model, state.history, (piece) => {
      answer += piece;
      target.textContent = answer;
      $("messages").scrollTop = $("messages").scrollHeight;
    }, state.chatAbort.signal);
    state.history.push({ role: "assistant", content: answer });
  } catch (error) {
    if (error.name !== "AbortError") {
      target.parentElement.classList.add("error");
      target.textContent = answer + (answer ? "\n" : "") + `⚠ ${error.message}`;
    }
    state.history.pop();
  } finally {
    target.parentElement.classList.remove("streaming");
    target.parentElement.classList.add("done");
    state.chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

// ------------------------------------------------------------------ compare

async function sendCompare(event) {
  event.preventDefault();
  const text = $("compare-input").value.trim();
  if (!text) return;
  const models = [...$("compare-models").querySelectorAll("input:checked")].map((i) => i.value);
  const grid = $("compare-grid");
  grid.replaceChildren();
  grid.style.setProperty("--columns", Math.max(1, models.length));
  $("compare-send").disabled = true;
  const runs = models.map(async (model) => {
    const column = document.createElement("div");
    column.className = "compare-col streaming";
    column.dataset.model = model;
    const title = document.createElement("h3");
    title.textContent = model;
    const output = document.createElement("div");
    output.className = "compare-output";
    const meta = document.createElement("div");
    meta.className = "meta";
    column.append(title, output, meta);
    grid.appendChild(column);
    const started = performance.now();
    let tokens = 0;
    try {
      const finish = await streamChat(model, [{ role: "user", content: text }], (piece) => {
        tokens += 1;
        output.textContent += piece;
      });
      const seconds = (performance.now() - started) / 1000;
      meta.textContent = `${finish || "stop"} · ${seconds.toFixed(1)} s`;
    } catch (error) {
      column.classList.add("error");
      output.textContent += `⚠ ${error.message}`;
    } finally {
      column.classList.remove("streaming");
      column.classList.add("done");
    }
  });
  await Promise.all(runs);
  $("compare-send").disabled = false;
}

// ------------------------------------------------------------------ attention

// The head-averaged attention of one layer of one model on `text` (POST /v1/attention).
async function fetchAttention(model, text, layer) {
  const response = await fetch("/v1/attention", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ model, text, layers: [layer] }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// One cell per (query, key) token pair; `max` is shared by every model so colours compare across maps.
function drawAttention(canvas, data, max) {
  const matrix = data.attention[0];
  const n = matrix.length;
  const cell = Math.max(4, Math.floor(260 / n));
  canvas.width = canvas.height = n * cell;
  const ctx = canvas.getContext("2d");
  matrix.forEach((row, i) => row.forEach((value, j) => {
    const masked = data.causal && j > i;
    const t = Math.sqrt(value / max);
    ctx.fillStyle = masked ? "#eeeeee" : `hsl(${250 - 190 * t}, 75%, ${18 + 52 * t}%)`;
    ctx.fillRect(j * cell, i * cell, cell, cell);
  }));
  canvas.title = data.tokens.join(" ");
}

async function showAttention() {
  const text = $("compare-input").value.trim();
  if (!text) return;
  const layer = parseInt($("attention-layer").value, 10) || -1;
  const models = [...$("compare-models").querySelectorAll("input:checked")].map((i) => i.value);
  const grid = $("attention-grid");
  grid.replaceChildren();
  grid.style.setProperty("--columns", Math.max(1, models.length));
  $("compare-attention").disabled = true;
  const results = await Promise.all(models.map((model) => fetchAttention(model, text, layer).catch((e) => e)));
  const maps = results.filter((r) => !(r instanceof Error));
  const max = Math.max(1e-9, ...maps.flatMap((r) => r.attention[0].flat()));
  models.forEach((model, k) => {
    const figure = document.createElement("figure");
    figure.className = "compare-col attention-map";
    figure.dataset.model = model;
    const caption = document.createElement("figcaption");
    const result = results[k];
    if (result instanceof Error) {
      figure.classList.add("error");
      caption.textContent = `${model}: ⚠ ${result.message}`;
      figure.append(caption);
    } else {
      caption.textContent = `${model} · layer ${result.layers[0]} of ${result.num_layers} · mean over heads`;
      const canvas = document.createElement("canvas");
      drawAttention(canvas, result, max);
      figure.append(caption, canvas);
    }
    grid.appendChild(figure);
  });
  $("compare-attention").disabled = false;
}

// ------------------------------------------------------------------ wiring

function showValue(id, digits) {
  $(`${id}-value`).textContent = parseFloat($(id).value).toFixed(digits);
}

function switchView(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.view === name));
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("active", v.id === `view-${name}`));
}

function init() {
  $("api-key").value = localStorage.getItem("ina-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("ina-api-key", apiKey());
    loadModels();
  });
  for (const [id, digits] of [["temperature", 2], ["top-p", 2], ["max-tokens", 0]]) {
    $(id).addEventListener("input", () => showValue(id, digits));
    showValue(id, digits);
  }
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => switchView(t.dataset.view)));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) sendChat(e);
  });
  $("chat-stop").addEventListener("click", () => state.chatAbort && state.chatAbort.abort());
  $("chat-clear").addEventListener("click", () => {
    state.history = [];
    $("messages").replaceChildren();
  });
  $("compare-form").addEventListener("submit", sendCompare);
  $("compare-attention").addEventListener("click", showAttention);
  loadLimits();
  loadModels();
}

init();
