// bnfold-serve's page. Read-only: it GETs /ui/api/models and /ui/api/live and POSTs images to the same
// /v1/models/{m}/classify a client would. Everything shown is set as text (never parsed as HTML).
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const state = { models: [], previous: new Map(), down: false, lastGood: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function sci(x) { return x === null || x === undefined ? "–" : Number(x).toExponential(2); }
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(2) + " %"; }
function ms(seconds) { return seconds === null ? "–" : (seconds * 1000).toPrecision(3) + " ms"; }

function say(node, text, isError) {
  node.textContent = text;
  node.hidden = !text;
  node.classList.toggle("error", Boolean(isError));
}

// ---- requests: every failure becomes one readable sentence ---------------------------------------------
async function errorOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return `${response.status}: ${body.error}`;
  } catch (_) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`.trim();
}

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error(`the server is not answering (${err.message})`);
  }
  if (!response.ok) throw new Error(await errorOf(response));
  return response.json();
}

// ---- models and their proof ----------------------------------------------------------------------------
function dl(pairs) {
  const list = el("dl");
  for (const [k, v] of pairs) list.append(el("dt", {}, k), el("dd", {}, v));
  return list;
}

function inputText(input) {
  const norm = input.normalization
    ? `mean ${JSON.stringify(input.normalization.mean)}, std ${JSON.stringify(input.normalization.std)}`
    : "none";
  return [`${input.name}: ${input.datatype} ${JSON.stringify(input.shape)}`, norm];
}

function foldTable(rows) {
  const table = el("table", { class: "fold" },
    el("thead", {}, el("tr", {}, el("th", {}, "BatchNorm"), el("th", {}, "action"), el("th", {}, "into"),
      el("th", {}, "max abs diff"), el("th", {}, "max rel diff"))));
  const body = el("tbody");
  for (const r of rows) {
    body.append(el("tr", {}, el("td", {}, r.bn), el("td", {}, r.action), el("td", {}, r.target),
      el("td", { class: "num" }, sci(r.max_abs_diff)), el("td", { class: "num" }, sci(r.max_rel_diff))));
  }
  table.append(body);
  return table;
}

function logRange(checks) {
  const values = checks.flatMap((c) => [c.error, c.bound]).filter((v) => v !== null && v > 0);
  if (!values.length) return [1e-8, 1];
  const lo = Math.floor(Math.log10(Math.min(...values))) - 1;
  const hi = Math.ceil(Math.log10(Math.max(...values)));
  return [10 ** lo, 10 ** Math.max(hi, lo + 1)];
}

function chartAxis(chart, x, lo, hi, top) {
  for (let e = Math.log10(lo); e <= Math.log10(hi) + 1e-9; e++) {
    chart.append(svg("line", { class: "axis", x1: x(10 ** e), x2: x(10 ** e), y1: 4, y2: top }));
    chart.append(svg("text", { x: x(10 ** e) - 10, y: top + 12 }, `1e${e}`));
  }
}

function checkMark(c, y, x, lo) {
  const g = svg("g", { class: `check-mark ${c.passed ? "pass" : "fail"}`, "data-check": c.name });
  const verdict = c.passed ? "ok" : "FAIL";
  g.append(svg("text", { x: 0, y: y + 4, class: c.passed ? "" : "fail" }, `${verdict} ${c.name}`));
  if (c.error === null) {
    g.append(svg("circle", { cx: 282, cy: y, r: 5 }));
    g.append(svg("text", { x: 292, y: y + 4 }, c.detail));
  } else {
    g.append(svg("line", { class: "bound", x1: x(c.bound), x2: x(c.bound), y1: y - 7, y2: y + 7 }));
    g.append(svg("circle", { cx: x(Math.max(c.error, lo)), cy: y, r: 5 }));
  }
  g.append(svg("title", {}, `${c.name}: ${c.error === null ? c.detail : `error ${sci(c.error)}, bound ${sci(c.bound)}`}`));
  return g;
}

function checksChart(checks) {
  const [lo, hi] = logRange(checks);
  const left = 280, width = 660, row = 20, top = checks.length * row + 8;
  const span = Math.log10(hi) - Math.log10(lo);
  const x = (v) => left + ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / span) * (width - left - 30);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${top + 30}`, role: "img" });
  chart.append(svg("title", {}, "each check's error (dot) against its bound (bar), log scale"));
  chartAxis(chart, x, lo, hi, top);
  checks.forEach((c, i) => chart.append(checkMark(c, 12 + i * row, x, lo)));
  chart.append(svg("text", { x: left, y: top + 26 }, "error (dot) vs bound (bar), max abs, log scale"));
  return chart;
}

function int8Section(int8) {
  const gate = int8.gate || {};
  const box = el("div", { class: "int8" }, el("h4", {}, "int8 gate"),
    dl([["verdict", gate.passed ? "passed" : "FAILED"], ["summary", gate.summary ?? "–"],
      ["agreement", pct(gate.agreement)], ["most sensitive layer", int8.most_sensitive_layer ?? "–"]]));
  if (int8.layers.length) {
    const body = el("tbody");
    for (const l of int8.layers) {
      body.append(el("tr", {}, el("td", {}, l.layer), el("td", {}, l.op),
        el("td", { class: "num" }, Number(l.added_noise_db).toFixed(1) + " dB")));
    }
    box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "layer"), el("th", {}, "op"),
      el("th", {}, "added noise"))), body));
  }
  return box;
}

function proofSection(v) {
  const box = el("div", { class: "proof" });
  if (!v.proof) {
    box.append(el("p", { class: "message" }, v.proof_note));
    return box;
  }
  const p = v.proof;
  box.append(el("h4", {}, `fold: ${p.fold.length} BatchNorm layers`), foldTable(p.fold));
  box.append(el("h4", {}, `verification (${p.precision})`), checksChart(p.checks));
  box.append(dl([["top-1 agreement", pct(p.top1_agreement)], ["rule", p.rule]]));
  if (p.int8) box.append(int8Section(p.int8));
  return box;
}

function versionSection(model, v) {
  const [shape, norm] = inputText(v.input);
  return el("div", { class: "version", "data-version": v.version },
    el("h3", {}, `${model.name} version ${v.version}`),
    dl([["provider", v.provider], ["precision", v.precision], ["input", shape], ["normalisation", norm],
      ["source", `${v.source.kind}: ${v.source.detail}`], ["labels", v.labels.join(", ")]]),
    proofSection(v));
}

function modelSection(m) {
  const variants = el("span", { class: "variants" });
  for (const name of m.variants) variants.append(el("span", { class: name === m.name ? "tag current" : "tag" }, name));
  const box = el("article", { class: "model", "data-model": m.name },
    el("h3", {}, m.name, " ", el("span", { class: m.state === "READY" ? "pass" : "fail" }, m.state)),
    dl([["variants", variants], ["versions loaded", m.versions.map((v) => v.version).join(", ") || "none"]]));
  if (m.reason) box.append(el("p", { class: "message" }, m.reason));
  for (const v of m.versions) box.append(versionSection(m, v));
  return box;
}

function renderModels(doc) {
  state.models = doc.models;
  const list = document.getElementById("models");
  list.replaceChildren(...doc.models.map(modelSection));
  if (!doc.models.length) list.append(el("p", { class: "message" }, "the repository holds no model"));
  const select = document.getElementById("try-model");
  const chosen = select.value;
  select.replaceChildren(...doc.models.filter((m) => m.versions.length).map((m) => el("option", { value: m.name }, m.name)));
  if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
  choose();
}

async function loadModels() {
  try {
    renderModels(await request("/ui/api/models"));
  } catch (err) {
    const list = document.getElementById("models");
    list.replaceChildren(el("p", { class: "message error" }, `cannot list the models: ${err.message}`));
  }
}

// ---- live figures --------------------------------------------------------------------------------------
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  let lowerBound = 0, lowerCount = 0;
  for (const [le, count] of buckets) {
    if (count >= q * total) {
      if (le === null) return lowerBound;
      return lowerBound + (le - lowerBound) * ((q * total - lowerCount) / Math.max(count - lowerCount, 1e-12));
    }
    lowerBound = le ?? lowerBound; lowerCount = count;
  }
  return lowerBound;
}

function minus(now, before) {
  if (!before) return now;
  return now.map(([le, count], i) => [le, count - (before[i] ? before[i][1] : 0)]);
}

function batchText(buckets) {
  const parts = [];
  let below = 0;
  for (const [le, count] of buckets) {
    if (count - below > 0) parts.push(`≤${le ?? "∞"}: ${count - below}`);
    below = count;
  }
  return parts.join(", ") || "–";
}

function liveRow(s, now) {
  const key = `${s.model}/${s.version}`;
  const before = state.previous.get(key);
  const total = Object.values(s.requests).reduce((a, b) => a + b, 0);
  const rate = before ? (total - before.total) / ((now - before.time) / 1000) : null;
  const recent = before && total > before.total ? minus(s.latency, before.latency) : s.latency;
  state.previous.set(key, { total, time: now, latency: s.latency });
  return el("tr", { "data-series": key }, el("td", {}, s.model), el("td", {}, s.version),
    el("td", { class: "num requests" }, total), el("td", { class: "num" }, rate === null ? "–" : rate.toFixed(1)),
    el("td", { class: "num" }, ms(quantile(recent, 0.5))), el("td", { class: "num" }, ms(quantile(recent, 0.95))),
    el("td", { class: "num" }, ms(quantile(recent, 0.99))), el("td", { class: "num" }, s.queue_depth),
    el("td", {}, batchText(s.batch_sizes)));
}

function setDown(message) {
  const banner = document.getElementById("banner");
  const stateNode = document.getElementById("server-state");
  if (message) {
    const since = state.lastGood ? ` The figures shown are from ${state.lastGood.toLocaleTimeString()}.` : "";
    say(banner, `${message}.${since} Retrying every ${REFRESH_MS / 1000} s.`, true);
    stateNode.textContent = "not answering";
    stateNode.className = "state down";
  } else {
    say(banner, "", false);
    stateNode.textContent = "answering";
    stateNode.className = "state ready";
  }
}

async function refreshLive() {
  try {
    const doc = await request("/ui/api/live");
    const now = performance.now();
    document.getElementById("live-rows").replaceChildren(...doc.series.map((s) => liveRow(s, now)));
    say(document.getElementById("live-message"), doc.series.length ? "" : "no model is loaded", false);
    state.lastGood = new Date();
    if (state.down) { state.down = false; loadModels(); }
    setDown("");
  } catch (err) {
    state.down = true;
    setDown(err.message.startsWith("the server") ? err.message : `the live figures cannot be read (${err.message})`);
  }
}

// ---- try it --------------------------------------------------------------------------------------------
function currentModel() {
  const name = document.getElementById("try-model").value;
  return state.models.find((m) => m.name === name);
}

function choose() {
  const model = currentModel();
  const input = model && model.versions.length ? model.versions[0].input : null;
  document.getElementById("pad-box").hidden = !(input && input.canvas);
  say(document.getElementById("try-message"), model ? "" : "no model is loaded", false);
  document.getElementById("bars").replaceChildren();
}

function showBars(prediction) {
  const rows = prediction.top.map((t) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * t.probability).toFixed(1)}%`;
    return el("div", { class: "bar-row", "data-label": t.label }, el("span", { class: "bar-label" }, t.label),
      el("div", {}, bar), el("span", { class: "num" }, pct(t.probability)));
  });
  document.getElementById("bars").replaceChildren(...rows);
}

async function classify(blob, filename) {
  const model = currentModel();
  const message = document.getElementById("try-message");
  if (!model) return say(message, "no model is loaded", true);
  const form = new FormData();
  form.append("file", blob, filename);
  say(message, `classifying ${filename}…`, false);
  document.getElementById("bars").replaceChildren();
  try {
    const url = `/v1/models/${encodeURIComponent(model.name)}/classify?top_k=5`;
    const doc = await request(url, { method: "POST", body: form });
    say(message, "", false);
    showBars(doc.predictions[0]);
  } catch (err) {
    say(message, err.message.includes(filename) ? err.message : `${filename}: ${err.message}`, true);
  }
}

function setUpDrop() {
  const drop = document.getElementById("drop");
  const file = document.getElementById("file");
  file.addEventListener("change", () => { if (file.files.length) classify(file.files[0], file.files[0].name); file.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) classify(f, f.name); else say(document.getElementById("try-message"), "drop an image file", true);
  });
  document.getElementById("try-model").addEventListener("change", choose);
}

function setUpPad() {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); };
  let drawing = false;
  const at = (e) => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  pad.addEventListener("pointerdown", (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...at(e)); pad.setPointerCapture(e.pointerId); });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    Object.assign(ctx, { strokeStyle: "#fff", lineWidth: 16, lineCap: "round", lineJoin: "round" });
    ctx.lineTo(...at(e)); ctx.stroke();
  });
  pad.addEventListener("pointerup", () => {
    if (!drawing) return;
    drawing = false;
    pad.toBlob((blob) => classify(blob, "drawing.png"), "image/png");
  });
  document.getElementById("pad-clear").addEventListener("click", () => { clear(); document.getElementById("bars").replaceChildren(); });
  clear();
}

document.getElementById("refresh-s").textContent = String(REFRESH_MS / 1000);
setUpDrop();
setUpPad();
loadModels().then(refreshLive);
setInterval(refreshLive, REFRESH_MS);
