// productvlm web page: each chosen photo gets a card and its own POST /v1/predict; the
// server's micro-batcher gathers concurrent photos into one generation anyway.
"use strict";

const $ = (sel) => document.querySelector(sel);
const drop = $("#drop");
const input = $("#files");
const cards = $("#cards");
const template = $("#card-template");
const keyForm = $("#key-form");
let limits = null;
let answerFields = []; // the model's extra answer fields (colour, material, ...), from /v1/model
let apiKey = localStorage.getItem("productvlm-api-key") || "";

function headers() {
  return apiKey ? { "X-API-Key": apiKey } : {};
}

async function loadModel() {
  const el = $("#model");
  try {
    const resp = await fetch("/v1/model", { headers: headers() });
    if (resp.status === 401) {
      keyForm.hidden = false;
      el.textContent = "API key needed";
      return;
    }
    const info = await resp.json();
    limits = info.limits || null;
    answerFields = info.answer_fields || [];
    el.textContent = info.model || "model";
    el.classList.remove("down");
    if (limits) {
      $("#hint").textContent =
        `JPEG, PNG, WebP, GIF or BMP · up to ${limits.max_upload_mb} MB each · several at once`;
    }
  } catch (err) {
    el.textContent = "server unreachable";
    el.classList.add("down");
  }
}

function formatPrice(price, currency) {
  if (price === null || price === undefined) return null;
  try {
    if (currency) {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(price);
    }
  } catch (err) { /* unknown currency code: plain number below */ }
  return new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    .format(price);
}

// The server's messages are written for people; these cover what never reached it.
function plainError(status, body) {
  if (body && body.error) return body.error;
  if (status === 401) return "This server needs an API key. Enter it above and try again.";
  if (status === 413) return "This photo is too large for the server.";
  if (status === 503) return "The server is busy right now. Try again in a moment.";
  if (status >= 500) return "The server ran into a problem reading this photo.";
  return `The server refused this photo (HTTP ${status}).`;
}

function newCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  img.onerror = () => img.parentElement.classList.add("none");
  card.querySelector(".filename").textContent = file.name;
  cards.append(card);
  return card;
}

function showResult(card, r) {
  card.classList.remove("pending");
  if (r.status && r.status !== 200) return showError(card, r.error);
  card.classList.add("done");
  card.dataset.ok = String(r.ok);
  const price = formatPrice(r.price, r.currency);
  card.querySelector(".category").textContent = r.category || "";
  card.querySelector(".title").textContent =
    r.title || "The model's answer could not be read as a product.";
  const priceEl = card.querySelector(".price");
  priceEl.textContent = price || "No price in the answer";
  priceEl.classList.toggle("unknown", !price);
  showFields(card, r);
  if (!r.ok) card.classList.add("unparsed");
  showTrust(card, r);
  card.querySelector(".raw code").textContent = r.raw || "";
  if (r.latency_ms != null) {
    card.querySelector(".latency").textContent = `${Math.round(r.latency_ms)} ms`;
  }
}

// The answer's extra fields, each as "Colour  Beige" (a number as the model wrote it).
function showFields(card, r) {
  const list = card.querySelector(".fields");
  list.replaceChildren();
  for (const field of answerFields) {
    const dt = document.createElement("dt");
    dt.textContent = field.words;
    const dd = document.createElement("dd");
    const value = r[field.name];
    dd.textContent = value === null || value === undefined ? "–" : String(value);
    list.append(dt, dd);
  }
}

// The calibrated interval and confidence; a low-confidence answer is marked plainly.
function showTrust(card, r) {
  const low = formatPrice(r.price_low, r.currency);
  const high = formatPrice(r.price_high, r.currency);
  card.querySelector(".interval").textContent = low && high
    ? `${Math.round(100 * r.interval_level)}% range: ${low} – ${high}` : "";
  const trust = card.querySelector(".trust");
  if (r.confidence === null || r.confidence === undefined) {
    trust.classList.add("none");
    return;
  }
  const pct = Math.round(100 * r.confidence);
  trust.querySelector("i").style.width = `${pct}%`;
  trust.querySelector(".trust-label").textContent = r.low_confidence
    ? `Low confidence (${pct}%): treat this answer as a guess` + (r.doubt ? ` (${r.doubt})` : "")
    : `Confidence ${pct}%`;
  card.classList.toggle("low", Boolean(r.low_confidence));
}

function showError(card, message) {
  card.classList.remove("pending");
  card.classList.add("failed");
  card.querySelector(".error").textContent = message;
}

async function predict(file) {
  const card = newCard(file);
  if (limits && file.size > limits.max_upload_mb * 1e6) {
    const mb = (file.size / 1e6).toFixed(1);
    return showError(card, `${file.name} is ${mb} MB; the limit is ${limits.max_upload_mb} MB.`);
  }
  const form = new FormData();
  form.append("files", file, file.name);
  let resp;
  try {
    resp = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
  } catch (err) {
    return showError(card, "Could not reach the server. Is it still running?");
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { /* not JSON: plainError covers it */ }
  if (resp.status === 401) keyForm.hidden = false;
  if (body && body.results && body.results.length) return showResult(card, body.results[0]);
  showError(card, plainError(resp.status, body));
}

function handle(files) {
  const list = Array.from(files);
  if (!list.length) return;
  $("#toolbar").hidden = false;
  list.forEach(predict);
  const n = cards.children.length;
  $("#summary").textContent = `${n} photo${n === 1 ? "" : "s"}`;
}

input.addEventListener("change", () => { handle(input.files); input.value = ""; });
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
});
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => handle(e.dataTransfer.files));
// A photo dropped beside the zone should not make the browser navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

$("#clear").addEventListener("click", () => {
  cards.querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
  cards.replaceChildren();
  $("#toolbar").hidden = true;
});

keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("#api-key").value.trim();
  localStorage.setItem("productvlm-api-key", apiKey);
  keyForm.hidden = true;
  loadModel();
});

loadModel();
