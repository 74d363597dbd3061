// The service's page: search a photo, see the matches, enrol the photo, remove an item.
// Plain browser JavaScript, no build step. Every text from the service is shown as text
// (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, threshold: null, far: null };

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function call(method, path, body) {
  const response = await fetch(path, { method, body, headers: headers() });
  const kind = response.headers.get("content-type") || "";
  const data = kind.includes("json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error(`${response.status}: ${(data && data.detail) || response.statusText}`);
  }
  return data;
}

function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function refreshSummary() {
  const h = await call("GET", "/healthz");
  state.threshold = h.threshold;
  state.far = h.far;
  const same = h.threshold === null ? "no calibrated threshold"
    : `same person at ≥ ${h.threshold.toFixed(3)} (false accepts ${h.far * 100}% of pairs)`;
  $("summary").textContent = `${h.items} faces indexed · model ${h.model || h.fingerprint} · ${same}`;
  $("threshold-note").textContent = h.threshold === null ? ""
    : `· below ${h.threshold.toFixed(3)}: not the same person`;
}

function showPhoto(file) {
  const img = $("photo");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("box").hidden = true;
}

function drawBox(box) {
  const img = $("photo");
  const place = () => {
    if (!box || !img.naturalWidth) { $("box").hidden = true; return; }
    const [x, y, w, h] = box;
    const style = $("box").style;
    style.left = `${(100 * x) / img.naturalWidth}%`;
    style.top = `${(100 * y) / img.naturalHeight}%`;
    style.width = `${(100 * w) / img.naturalWidth}%`;
    style.height = `${(100 * h) / img.naturalHeight}%`;
    $("box").hidden = false;
  };
  if (img.complete) place(); else img.onload = place;
}

async function loadThumbnail(img, id, tries = 4) {
  try {
    const response = await fetch("/thumbnails/" + encodeURIComponent(id), { headers: headers() });
    if (response.status === 429 && tries > 1) {  // the service's rate limit: wait as it says
      const wait = Number(response.headers.get("Retry-After")) || 1;
      setTimeout(() => loadThumbnail(img, id, tries - 1), wait * 1000);
      return;
    }
    if (!response.ok) return;
    img.src = URL.createObjectURL(await response.blob());
    img.onload = () => URL.revokeObjectURL(img.src);
  } catch (e) { /* the card stays without its picture */ }
}

function card(match) {
  const li = document.createElement("li");
  li.dataset.id = match.id;
  li.dataset.identity = match.identity || "";
  const below = state.threshold !== null && match.score < state.threshold;
  if (below) li.classList.add("below");
  const img = document.createElement("img");
  img.alt = `face of ${match.identity || match.name}`;
  loadThumbnail(img, match.id);
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = match.identity || "(no identity)";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = match.id;
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = `#${match.rank} · ${match.score.toFixed(3)}`;
  if (state.threshold !== null) {
    const verdict = document.createElement("span");
    verdict.className = "verdict";
    verdict.textContent = below ? "below threshold" : "same person";
    score.append(verdict);
  }
  const remove = document.createElement("button");
  remove.className = "delete";
  remove.type = "button";
  remove.title = "remove this item from the index";
  remove.textContent = "✕";
  remove.addEventListener("click", () => removeItem(match.id, li));
  li.append(img, who, name, score, remove);
  return li;
}

async function search(file) {
  state.file = file;
  showPhoto(file);
  $("enrol").hidden = false;
  say("searching…");
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", $("k").value || "10");
  try {
    const answer = await call("POST", "/search", form);
    drawBox(answer.box);
    $("matches").replaceChildren(...answer.matches.map(card));
    const found = answer.matches.filter((m) => state.threshold === null || m.score >= state.threshold);
    const face = answer.box ? "face found" : "no face found: searched the centre of the photo";
    say(state.threshold === null ? `${face} · ${answer.matches.length} matches` :
      `${face} · ${found.length} of ${answer.matches.length} matches reach the same-person threshold`);
  } catch (e) {
    $("matches").replaceChildren();
    say(`search failed: ${e.message}`, true);
  }
}

async function enrol(event) {
  event.preventDefault();
  if (!state.file) return;
  const identity = $("identity").value.trim();
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("identity", identity);
  form.append("name", state.file.name);
  try {
    const answer = await call("POST", "/items", form);
    await refreshSummary();
    await search(state.file);
    say(`enrolled ${answer.ids.join(", ")} as ${identity}${answer.replaced ? " (replaced)" : ""}` +
      ` · ${answer.items} faces indexed`);
  } catch (e) {
    say(`enrolment failed: ${e.message}`, true);
  }
}

async function removeItem(id, li) {
  if (!window.confirm(`Remove ${id} from the index?`)) return;
  try {
    const answer = await call("DELETE", "/items/" + encodeURIComponent(id));
    li.remove();
    await refreshSummary();
    say(`removed ${id} · ${answer.items} faces indexed`);
  } catch (e) {
    say(`removal failed: ${e.message}`, true);
  }
}

function start() {
  $("token").value = sessionStorage.getItem("facetriplet-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("facetriplet-token", $("token").value.trim());
    refreshSummary().catch((e) => say(e.message, true));
  });
  $("file").addEventListener("change", () => { if ($("file").files[0]) search($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) search(e.dataTransfer.files[0]);
  });
  $("enrol").addEventListener("submit", enrol);
  refreshSummary().catch((e) => say(`the service did not answer: ${e.message}`, true));
}

start();
