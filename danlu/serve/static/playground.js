// danlu's playground: one tab per kind of model the server holds, talking to its own API.
"use strict";

const $ = (id) => document.getElementById(id);
const TABS = { text: "Chat", speech: "Transcribe", rows: "Predict" };
let cards = [];

$("key").value = localStorage.getItem("danlu-key") || "";
$("key").addEventListener("change", () => { localStorage.setItem("danlu-key", $("key").value); load(); });

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if ($("key").value) h.Authorization = "Bearer " + $("key").value;
  return h;
}

async function failure(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

function show(out, text, isError) {
  out.textContent = text;
  out.classList.toggle("error", Boolean(isError));
}

async function load() {
  const r = await fetch("/v1/models", { headers: headers(false) });
  if (!r.ok) { show($("text-out"), await failure(r), true); $("text").hidden = false; return; }
  cards = (await r.json()).data;
  const nav = $("tabs");
  nav.textContent = "";
  let first = null;
  for (const kind of Object.keys(TABS)) {
    const models = cards.filter((c) => c.kind === kind);
    const select = $(kind + "-model");
    select.textContent = "";
    for (const m of models) select.add(new Option(m.id, m.id));
    if (!models.length) continue;
    const b = document.createElement("button");
    b.textContent = TABS[kind];
    b.setAttribute("role", "tab");
    b.addEventListener("click", () => open(kind));
    b.dataset.kind = kind;
    nav.appendChild(b);
    first = first || kind;
  }
  if (first) open(first);
  if (cards.some((c) => c.kind === "rows")) drawForm();
}

function open(kind) {
  for (const k of Object.keys(TABS)) $(k).hidden = k !== kind;
  for (const b of $("tabs").children) b.setAttribute("aria-selected", String(b.dataset.kind === kind));
}

// ---- text: streamed chat or completion (server-sent events read from the response body)
$("send").addEventListener("click", async () => {
  const out = $("text-out");
  show(out, "");
  const chat = $("mode").value === "chat";
  const body = {
    model: $("text-model").value, stream: true,
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
  };
  if (chat) body.messages = [{ role: "user", content: $("prompt").value }];
  else body.prompt = $("prompt").value;
  const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
                        { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!r.ok) { show(out, await failure(r), true); return; }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (event === "[DONE]") return;
      const data = JSON.parse(event);
      if (data.error) { show(out, data.error.message, true); return; }
      const choice = data.choices[0];
      if (choice) out.textContent += chat ? (choice.delta.content || "") : choice.text;
    }
  }
});

// ---- speech: an uploaded (or recorded) file, transcript with segment times
async function transcribe(blob, name) {
  const out = $("speech-out");
  show(out, "…");
  const form = new FormData();
  form.append("model", $("speech-model").value);
  form.append("file", blob, name);
  form.append("response_format", "verbose_json");
  const r = await fetch("/v1/audio/transcriptions", { method: "POST", headers: headers(false), body: form });
  if (!r.ok) { show(out, await failure(r), true); return; }
  const t = await r.json();
  const times = t.segments.map((s) => `[${s.start.toFixed(2)} – ${s.end.toFixed(2)}] ${s.text}`);
  show(out, t.text + (times.length ? "\n\n" + times.join("\n") : ""));
}

$("transcribe").addEventListener("click", () => {
  const file = $("audio").files[0];
  if (!file) { show($("speech-out"), "choose a recording first", true); return; }
  transcribe(file, file.name);
});

if (navigator.mediaDevices && window.MediaRecorder) {
  const button = $("record");
  button.hidden = false;
  let recorder = null;
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const parts = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => parts.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        button.textContent = "Record";
        const blob = new Blob(parts, { type: recorder.mimeType });
        recorder = null;
        transcribe(blob, "recording.webm");
      };
      recorder.start();
      button.textContent = "Stop";
    } catch (e) { show($("speech-out"), "no microphone: " + e.message, true); }
  });
}

// ---- rows: a form from the model's input schema; the label and a bar per class
async function drawForm() {
  const form = $("fields");
  form.textContent = "";
  const name = $("rows-model").value;
  if (!name) return;
  const r = await fetch("/v1/models/" + encodeURIComponent(name), { headers: headers(false) });
  if (!r.ok) { show($("rows-out"), await failure(r), true); return; }
  const card = await r.json();
  const fields = (card.inputs || []).flatMap((f) => f.fields || [f]);
  for (const f of fields) {
    const label = document.createElement("label");
    label.textContent = `${f.name} (${f.type})`;
    label.htmlFor = "field-" + f.name;
    let input;
    if (f.categories) {
      input = document.createElement("select");
      for (const c of f.categories) input.add(new Option(c, c));
    } else if (f.type === "text") {
      input = document.createElement("textarea");
    } else {
      input = document.createElement("input");
      input.type = f.type === "number" ? "number" : "text";
      input.step = "any";
    }
    input.id = "field-" + f.name;
    input.name = f.name;
    input.dataset.type = f.type;
    form.append(label, input);
  }
}
$("rows-model").addEventListener("change", drawForm);

$("predict").addEventListener("click", async () => {
  const out = $("rows-out");
  const row = {};
  for (const input of $("fields").elements) {
    row[input.name] = input.dataset.type === "number" && input.value !== "" ? Number(input.value) : input.value;
  }
  const name = $("rows-model").value;
  const r = await fetch("/v1/predict/" + encodeURIComponent(name),
                        { method: "POST", headers: headers(true), body: JSON.stringify({ rows: [row] }) });
  if (!r.ok) { show(out, await failure(r), true); return; }
  const p = (await r.json()).predictions[0];
  out.textContent = "";
  out.classList.remove("error");
  const head = document.createElement("strong");
  head.textContent = "label" in p ? String(p.label) : JSON.stringify(p.value ?? p.values);
  out.appendChild(head);
  for (const [cls, prob] of Object.entries(p.probabilities || {})) {
    const bar = document.createElement("div");
    bar.className = "bar";
    const name = document.createElement("span");
    name.textContent = cls;
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = Math.round(prob * 200) + "px";
    const value = document.createElement("span");
    value.textContent = prob.toFixed(3);
    bar.append(name, fill, value);
    out.appendChild(bar);
  }
});

load();
