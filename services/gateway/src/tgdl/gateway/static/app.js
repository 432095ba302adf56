"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 50, BATCH_PAGE = 10;
const state = {
  offset: 0, total: 0, batchLimit: 50, query: "", names: new Map(),
  selected: new Set(), batchesOffset: 0, batchesTimer: null,
  batchId: null, source: null, poller: null, ticker: null, snapshot: null, receivedAt: 0,
  steering: false,
};

// --- formatting: decimal units, as the CLI and disks count --------------------------------
function size(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i === 0 || (i === 1 && n >= 10) ? 0 : 1)} ${units[i]}`;
}
function speed(n) { return n ? `${size(n)}/s` : ""; }
function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.ceil(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")} min`;
}
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
const UNITS = { "": 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1048576,
                g: 1e9, gb: 1e9, gib: 1073741824, t: 1e12, tb: 1e12, tib: 1099511627776 };
function parseSize(text, label) {
  text = text.trim();
  if (!text) return null;
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text);
  if (!m || !(m[2].toLowerCase() in UNITS)) throw new Error(`${label}: "${text}" is not a size (e.g. 5MB, 1.5GB, 800KiB)`);
  return Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}
function link(url, text) { const a = el("a", text); a.href = url; return a; }
function bar(value, label) {
  const p = el("progress"); p.max = 100; p.value = value || 0; p.setAttribute("aria-label", label); return p;
}
function notice(text, kind) { const n = $("notice"); n.textContent = text || ""; n.className = text ? kind : ""; }

// The API token (when the server asks for one): asked once, kept for this tab's session.
const TOKEN_KEY = "tgdl-token";
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
async function api(method, url, body, retried) {
  const init = { method, headers: { Accept: "application/json" } };
  // JSON on every change, so the server can tell this page from a cross-site form.
  if (method !== "GET") init.headers["Content-Type"] = "application/json";
  if (body !== undefined) init.body = JSON.stringify(body);
  const sent = token();
  if (sent) init.headers.Authorization = `Bearer ${sent}`;
  const response = await fetch(url, init);
  if (response.status === 401 && !retried) {  // asked once, even with requests in flight
    const given = token() !== sent ? token()
      : window.prompt("This tgdl server needs its API token (TGDL_API_TOKEN):");
    if (given) { sessionStorage.setItem(TOKEN_KEY, given.trim()); return api(method, url, body, true); }
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || response.statusText);
    throw new Error(`${detail}${data.suggestion ? " " + data.suggestion : ""}`);
  }
  return data;
}

// --- messages: filters done by the server -------------------------------------------------
function filterQuery() {
  const q = new URLSearchParams();
  const chat = $("f-chat").value.trim(); if (chat) q.set("chat", chat);
  const types = [...document.querySelectorAll("#f-types input:checked")].map((b) => b.value);
  if (types.length) q.set("media_type", types.join(","));
  const min = parseSize($("f-min").value, "Min size"); if (min !== null) q.set("min_size", min);
  const max = parseSize($("f-max").value, "Max size"); if (max !== null) q.set("max_size", max);
  if ($("f-since").value) q.set("since", $("f-since").value);
  if ($("f-until").value) q.set("until", $("f-until").value);
  const text = $("f-q").value.trim(); if (text) q.set("q", text);
  if ($("f-media-only").checked) q.set("media_only", "true");
  return q.toString();
}

async function loadMessages() {
  try {
    const page = await api("GET", `/api/messages?${state.query}&offset=${state.offset}&limit=${PAGE}`);
    state.total = page.total; state.batchLimit = page.batch_limit || state.batchLimit;
    $("messages").replaceChildren(...page.items.map(messageRow));
    if (!page.items.length) {
      const td = el("td", "No messages match these filters.", "muted"); td.colSpan = 8;
      const tr = el("tr"); tr.append(td); $("messages").append(tr);
    }
    const last = Math.min(state.offset + PAGE, state.total);
    $("page").textContent = state.total ? `${state.offset + 1}-${last} of ${state.total}` : "";
    $("match-count").textContent = `${state.total} matching message${state.total === 1 ? "" : "s"}`;
    $("select-matching").textContent = `Select all matching (up to ${state.batchLimit})`;
    $("download-matching").textContent = `Download all ${state.total} matching`;
    $("download-matching").disabled = state.total === 0;
    $("prev").disabled = state.offset === 0; $("next").disabled = last >= state.total;
    $("all").checked = false;
  } catch (err) { notice(err.message, "error"); }
}

function messageRow(m) {
  if (m.file_name) state.names.set(m.message_id, m.file_name);
  const tr = el("tr"); tr.dataset.id = m.message_id;
  const box = el("input"); box.type = "checkbox"; box.disabled = m.download_state === "no_media";
  box.checked = state.selected.has(m.message_id);
  box.setAttribute("aria-label", `Select message ${m.message_id}${m.file_name ? " " + m.file_name : ""}`);
  box.onchange = () => { toggle(m.message_id, box.checked); tr.classList.toggle("selected", box.checked); };
  tr.classList.toggle("selected", box.checked);
  const first = el("td"); first.append(box);
  const stateCell = el("td", null, `state-${m.download_state}`);
  stateCell.append(m.download_url ? link(m.download_url, "downloaded") : m.download_state.replace("_", " "));
  const file = el("td", m.file_name || (m.caption ? `“${m.caption}”` : ""), "file");
  if (m.file_name && m.caption) { file.append(el("span", m.caption, "muted caption")); }
  tr.append(first, el("td", m.message_id), el("td", m.chat, "hide-narrow"), el("td", m.media_type || "none", "hide-narrow"),
    file, el("td", size(m.size), "num"), el("td", when(m.date), "hide-narrow"), stateCell);
  return tr;
}

function toggle(id, on) {
  if (on && !state.selected.has(id) && state.selected.size >= state.batchLimit) {
    notice(`A batch holds at most ${state.batchLimit} messages.`, "error");
    const box = document.querySelector(`#messages tr[data-id="${id}"] input`); if (box) box.checked = false;
    return;
  }
  on ? state.selected.add(id) : state.selected.delete(id);
  showSelected();
}
function showSelected() {
  const n = state.selected.size;
  $("selected-count").textContent = `${n} selected`;
  $("start").disabled = n === 0;
  $("start").textContent = n ? `Start download of ${n}` : "Start download";
}

async function selectMatching() {
  try {
    const q = new URLSearchParams(state.query); q.set("media_only", "true");
    const page = await api("GET", `/api/messages?${q}&offset=0&limit=${Math.min(200, state.batchLimit)}`);
    state.selected.clear();
    for (const m of page.items.slice(0, state.batchLimit)) state.selected.add(m.message_id);
    showSelected(); loadMessages();
    const more = page.total > state.selected.size ? ` (the first ${state.selected.size} of ${page.total}: a batch holds at most ${state.batchLimit})` : "";
    notice(`Selected ${state.selected.size} matching message${state.selected.size === 1 ? "" : "s"}${more}.`, "info");
  } catch (err) { notice(err.message, "error"); }
}

// Links as copied from Telegram: the gateway names their messages, or says why not.
async function selectLinked(event) {
  event.preventDefault();
  const links = [...new Set($("links").value.split(/\s+/).filter(Boolean))];
  if (!links.length) { notice("Paste at least one message link, e.g. https://t.me/somechannel/1234.", "error"); return; }
  if (links.length > state.batchLimit) { notice(`At most ${state.batchLimit} links at once: a batch holds at most ${state.batchLimit} messages.`, "error"); return; }
  try {
    const q = new URLSearchParams(); links.forEach((l) => q.append("link", l));
    const found = await api("GET", `/api/messages/resolve?${q}`);
    let added = 0; const missed = [];
    for (const item of found.items) {
      if (item.message_id == null) { missed.push(`${item.link}: ${item.detail}. ${item.suggestion}`); continue; }
      for (const id of item.album || [item.message_id]) {  // an album's link names all of it
        if (state.selected.has(id)) continue;
        if (state.selected.size >= state.batchLimit) { missed.push(`${item.link}: a batch holds at most ${state.batchLimit} messages`); break; }
        state.selected.add(id); added++;
      }
    }
    showSelected(); loadMessages();
    notice(`Selected ${added} linked message${added === 1 ? "" : "s"}.` + (missed.length ? ` Not selected: ${missed.join(" ")}` : ""), missed.length ? "error" : "info");
    if (!missed.length) $("links").value = "";
  } catch (err) { notice(err.message, "error"); }
}

function applyFilters(event) {
  if (event) event.preventDefault();
  try { state.query = filterQuery(); } catch (err) { notice(err.message, "error"); return; }
  notice(""); state.offset = 0; loadMessages();
}

// --- starting a batch ----------------------------------------------------------------------
function batchBody(ids) {  // a start of these ids with the action bar's settings
  const body = {
    message_ids: ids, force: $("force").checked,
    max_concurrent: Number($("max-concurrent").value), priority: $("priority").value,
  };
  const template = $("name-template").value.trim();
  if (template) body.name_template = template;  // empty: the service's TGDL_NAME_TEMPLATE
  return body;
}

// Every message with media the filters match, as batches of at most the batch limit.
async function downloadMatching() {
  try {
    const q = new URLSearchParams(state.query); q.set("media_only", "true");
    const ids = [];
    for (;;) {
      const page = await api("GET", `/api/messages?${q}&offset=${ids.length}&limit=200`);
      ids.push(...page.items.map((m) => m.message_id));
      if (!page.items.length || ids.length >= page.total) break;
    }
    if (!ids.length) { notice("No message with media matches these filters.", "error"); return; }
    const count = Math.ceil(ids.length / state.batchLimit);
    if (count > 1 && !confirm(`Start ${ids.length} downloads as ${count} batches of at most ${state.batchLimit}?`)) return;
    const started = [];
    for (let i = 0; i < ids.length; i += state.batchLimit) {
      started.push(await api("POST", "/api/media/batch-download", batchBody(ids.slice(i, i + state.batchLimit))));
    }
    notice(count === 1 ? started[0].message : `Started ${ids.length} downloads as ${count} batches: ${started.map((b) => b.batch_id).join(", ")}.`, "info");
    loadMessages(); state.batchesOffset = 0; await loadBatches();
    openBatch(started[0].batch_id, true);
  } catch (err) { notice(err.message, "error"); }
}

async function startBatch() {
  if (!state.selected.size) { notice("Select at least one message.", "error"); return; }
  $("start").disabled = true;
  try {
    const started = await api("POST", "/api/media/batch-download", batchBody([...state.selected]));
    const refused = started.failed_to_start.map((f) => `#${f.message_id}: ${f.detail}`).join("; ");
    notice(started.message + (refused ? `. Not started: ${refused}` : ""), refused ? "error" : "info");
    state.selected.clear(); showSelected(); loadMessages();
    state.batchesOffset = 0; await loadBatches();
    openBatch(started.batch_id, true);
  } catch (err) { notice(err.message, "error"); showSelected(); }
}

// --- the batch list -----------------------------------------------------------------------
async function loadBatches() {
  clearTimeout(state.batchesTimer);
  try {
    const page = await api("GET", `/api/media/batches?offset=${state.batchesOffset}&limit=${BATCH_PAGE}`);
    $("batches").replaceChildren(...page.items.map(batchItem));
    if (!page.items.length) $("batches").append(el("li", "No batches yet: select messages and start a download.", "muted"));
    const last = state.batchesOffset + page.items.length;
    $("batches-page").textContent = page.total ? `${state.batchesOffset + 1}-${last} of ${page.total}` : "";
    $("batches-newer").disabled = state.batchesOffset === 0; $("batches-older").disabled = last >= page.total;
    // Poll the list while a batch on it is still running.
    if (page.items.some((b) => !b.finished)) state.batchesTimer = setTimeout(loadBatches, 2000);
  } catch (err) { notice(err.message, "error"); state.batchesTimer = setTimeout(loadBatches, 5000); }
}

function batchItem(b) {
  const li = el("li"); li.dataset.batch = b.batch_id;
  if (b.batch_id === state.batchId) li.classList.add("current");
  const open = el("button", null); open.type = "button";
  open.append(el("code", b.batch_id));
  open.setAttribute("aria-label", `Open batch ${b.batch_id}, ${b.overall_status.replace("_", " ")}, ${b.progress}%`);
  open.onclick = () => openBatch(b.batch_id, true);
  const numbers = el("span", `${b.overall_status.replace("_", " ")} · ${b.progress}% · ${b.completed}/${b.total_files} files` +
    (b.priority && b.priority !== "normal" ? ` · ${b.priority} priority` : "") +
    (b.download_speed ? ` · ${speed(b.download_speed)}` : "") + ` · ${when(b.created_at)}` +
    (b.rule_id ? ` · started by watch rule ${b.rule_id}` : ""), `state-${b.overall_status}`);
  li.append(open, bar(b.progress, `Progress of batch ${b.batch_id}`), numbers, el("span", b.summary, "summary"));
  return li;
}

// --- one batch, live ----------------------------------------------------------------------
function stopFollowing() {
  if (state.source) { state.source.close(); state.source = null; }
  clearInterval(state.poller); state.poller = null;
}

function openBatch(id, focus) {
  stopFollowing();
  state.batchId = id; state.snapshot = null;
  history.replaceState(null, "", `#batch=${encodeURIComponent(id)}`);
  $("batch").hidden = false; $("batch-id").textContent = id; $("batch-state").textContent = "";
  $("summary").textContent = "Loading…"; $("files").replaceChildren();
  document.querySelectorAll("#batches li").forEach((li) => li.classList.toggle("current", li.dataset.batch === id));
  if (focus) $("batch-h").focus();
  // An EventSource cannot send headers: the event stream takes the token in its query.
  const url = `/api/media/batch-events/${encodeURIComponent(id)}` +
    (token() ? `?access_token=${encodeURIComponent(token())}` : "");
  if ("EventSource" in window) {
    state.source = new EventSource(url);
    state.source.onmessage = (event) => render(JSON.parse(event.data));
    state.source.onerror = () => { if (state.source) { state.source.close(); state.source = null; poll(id); } };
  } else poll(id);
}

function poll(id) {  // the event stream ended or broke: ask for the status once a second
  if (state.batchId !== id || (state.snapshot && state.snapshot.finished)) return;
  clearInterval(state.poller);
  const once = async () => {
    try { render(await api("GET", `/api/media/batch-status/${encodeURIComponent(id)}`)); }
    catch (err) { notice(err.message, "error"); stopFollowing(); }
  };
  once(); state.poller = setInterval(once, 1000);
}

function totals(files) {
  let done = 0, total = 0, rate = 0, known = true;
  for (const f of files) {
    if (f.status === "completed") done += f.total_size || 0;
    else if (["downloading", "waiting", "paused"].includes(f.status)) done += f.downloaded_size || 0;
    if (f.status === "downloading") rate += f.download_speed || 0;
    if (f.total_size === null || f.total_size === undefined) known = false; else total += f.total_size;
  }
  return { done, total: known ? total : null, rate };
}

function render(status) {
  if (status.batch_id !== state.batchId) return;
  const wasFinished = state.snapshot && state.snapshot.finished;
  state.snapshot = status; state.receivedAt = Date.now();
  const { done, total, rate } = totals(status.files);
  const percent = status.overall_status === "completed" ? 100 : total ? Math.floor(100 * done / total) : 0;
  $("batch-progress").value = percent;
  $("batch-progress").setAttribute("aria-valuetext", `${percent}%`);
  $("batch-state").textContent = `· ${status.overall_status.replace("_", " ")}`;
  $("batch-state").className = `state-${status.overall_status}`;
  const eta = !status.finished && total !== null && rate ? ` · about ${duration((total - done) / rate)} left` : "";
  $("batch-numbers").textContent = `${percent}% · ${size(done)} of ${total === null ? "?" : size(total)}` +
    (rate && !status.finished ? ` · ${speed(rate)}` : "") + eta;
  $("summary").textContent = status.summary;
  $("cancel").disabled = status.finished;
  // the server decides which of them another try can mend (not those without media...)
  $("retry").hidden = !status.finished || !status.files.some((f) => f.status === "failed" || f.status === "cancelled");
  showSteering(status);
  $("files").replaceChildren(...status.files.map(fileRow));
  if (status.finished) {
    stopFollowing();
    if (!wasFinished) { loadMessages(); loadBatches(); }
  }
}

function waitLeft(f) {
  return Math.max(0, (f.wait_seconds || 0) - (Date.now() - state.receivedAt) / 1000);
}

function fileRow(f) {
  const tr = el("tr"); tr.dataset.id = f.message_id; tr.dataset.status = f.status;
  // (a signed link ends in ?exp=...&sig=...: the name is the path's last part)
  const name = f.download_url ? decodeURIComponent(f.download_url.split("?")[0].split("/").pop()) : state.names.get(f.message_id);
  const file = el("td", null, "file");
  file.append(`#${f.message_id} `);
  if (f.download_url) file.append(link(f.download_url, name));
  else if (name) file.append(el("span", name, "muted"));
  const progressCell = el("td"), inner = el("div", null, "pcell");
  inner.append(bar(f.progress, `Progress of message ${f.message_id}`), el("span", `${f.progress || 0}%`));
  progressCell.append(inner);
  const details = el("td");
  if (f.status === "waiting") {
    const left = el("span", `Telegram rate limit: resumes in ${duration(waitLeft(f))}`, "countdown");
    left.dataset.waitSeconds = f.wait_seconds || 0;
    details.append(left);
  } else if (f.error) {
    details.append(el("span", `${f.error}: ${f.detail || ""}`, "state-failed"));
    if (f.suggestion) details.append(el("br"), el("span", f.suggestion, "suggestion"));
  } else if (f.same_file_as) {
    details.append(el("span", `same file as #${f.same_file_as}: linked, not downloaded again`, "muted"));
  } else if (f.already_downloaded) details.append(el("span", "already downloaded", "muted"));
  const label = { pending: "waiting for its turn", queued: "queued", waiting: "waiting (rate limit)" }[f.status] || f.status;
  const running = ["downloading", "waiting", "paused"].includes(f.status) && f.downloaded_size;
  const amount = running && f.total_size ? `${size(f.downloaded_size || 0)} / ${size(f.total_size)}` : size(f.total_size);
  tr.append(file, el("td", label, `state-${f.status}`), progressCell, el("td", amount, "num"),
    el("td", f.status === "downloading" ? speed(f.download_speed) : "", "num"),
    el("td", f.status === "downloading" ? duration(f.estimated_time_remaining) : "", "num"), details);
  return tr;
}

function tick() {  // rate-limit waits count down between snapshots
  if (!state.snapshot) return;
  document.querySelectorAll("#files .countdown").forEach((span) => {
    const left = Math.max(0, Number(span.dataset.waitSeconds) - (Date.now() - state.receivedAt) / 1000);
    span.textContent = left > 0 ? `Telegram rate limit: resumes in ${duration(left)}` : "Telegram rate limit: resuming";
  });
}

// Pause/resume, max_concurrent and priority of the open batch. One toggle button, so the
// focus stays where it was; the selects follow the batch unless being changed.
function showSteering(status) {
  const paused = status.overall_status === "paused";
  const toggle = $("pause-resume");
  toggle.textContent = paused ? "Resume batch" : "Pause batch";
  toggle.disabled = status.finished;
  for (const [id, value] of [["batch-max-concurrent", status.max_concurrent], ["batch-priority", status.priority]]) {
    const select = $(id);
    select.disabled = status.finished;
    if (value !== undefined && value !== null && document.activeElement !== select) select.value = String(value);
  }
}

async function steer(method, path, body) {
  // (never disabled while a request runs: a disabled button would lose the focus)
  if (!state.batchId || state.steering) return;
  const id = encodeURIComponent(state.batchId);
  state.steering = true; $("pause-resume").setAttribute("aria-busy", "true");
  try {
    notice((await api(method, path.replace("{id}", id), body)).message, "info");
    if (!state.source && !state.poller) poll(state.batchId);
    loadBatches();
  } catch (err) { notice(err.message, "error"); }
  finally { state.steering = false; $("pause-resume").removeAttribute("aria-busy"); }
}

async function pauseOrResume() {
  const paused = state.snapshot && state.snapshot.overall_status === "paused";
  await steer("POST", paused ? "/api/media/batch-resume/{id}" : "/api/media/batch-pause/{id}");
}

async function retryBatch() {
  try {
    const started = await api("POST", `/api/media/batch-retry/${encodeURIComponent(state.batchId)}`);
    notice(started.message, "info");
    state.batchesOffset = 0; await loadBatches();
    openBatch(started.batch_id, true);
  } catch (err) { notice(err.message, "error"); }
}

async function cancelBatch() {
  if (!state.batchId) return;
  $("cancel").disabled = true;
  try {
    notice((await api("POST", `/api/media/batch-cancel/${encodeURIComponent(state.batchId)}`)).message, "info");
    if (!state.source && !state.poller) poll(state.batchId);
    loadBatches();
  } catch (err) { notice(err.message, "error"); $("cancel").disabled = false; }
}

// --- watch rules --------------------------------------------------------------------------
function ruleWhat(r) {
  let what = r.media_types.length ? r.media_types.join(", ") : "any media";
  if (r.min_size !== null) what += ` from ${size(r.min_size)}`;
  if (r.max_size !== null) what += ` up to ${size(r.max_size)}`;
  if (r.caption_regex) what += `, caption matching ${r.caption_regex}`;
  return what;
}
function ruleItem(r) {
  const li = el("li"); li.dataset.rule = r.rule_id;
  const toggle = el("button", r.enabled ? "Pause" : "Resume"); toggle.type = "button";
  toggle.setAttribute("aria-label", `${r.enabled ? "Pause" : "Resume"} watch rule ${r.rule_id}`);
  toggle.onclick = () => changeRule("PATCH", r.rule_id, { enabled: !r.enabled });
  const remove = el("button", "Delete", "danger"); remove.type = "button";
  remove.setAttribute("aria-label", `Delete watch rule ${r.rule_id}`);
  remove.onclick = () => changeRule("DELETE", r.rule_id);
  const actions = el("span"); actions.append(toggle, " ", remove);
  li.append(el("code", r.rule_id), el("span", `${r.chat}: ${ruleWhat(r)}`), actions,
    el("span", `${r.enabled ? "watching" : "paused"} · started ${r.batches_started} batches, ${r.files_started} files` +
      (r.last_batch_id ? ` · latest ${r.last_batch_id}` : ""), "summary"));
  return li;
}
async function loadRules() {
  try {
    const page = await api("GET", "/api/rules");
    $("rules").replaceChildren(...page.rules.map(ruleItem));
    if (!page.rules.length) $("rules").append(el("li", "No watch rules yet.", "muted"));
  } catch (err) { notice(err.message, "error"); }
}
async function changeRule(method, id, body) {
  try { await api(method, `/api/rules/${encodeURIComponent(id)}`, body); } catch (err) { notice(err.message, "error"); }
  loadRules();
}
async function createRule(event) {
  event.preventDefault();
  try {
    const body = { chat: $("r-chat").value.trim(),
                   media_types: [...document.querySelectorAll("#r-types input:checked")].map((b) => b.value) };
    const min = parseSize($("r-min").value, "Smallest file"); if (min !== null) body.min_size = min;
    const max = parseSize($("r-max").value, "Largest file"); if (max !== null) body.max_size = max;
    if ($("r-caption").value) body.caption_regex = $("r-caption").value;
    body.include_existing = $("r-existing").checked;
    const rule = await api("POST", "/api/rules", body);
    notice(`Watching ${rule.chat} (${rule.rule_id}): its ${body.include_existing ? "matching media already listed and its new ones download" : "new matching media download by themselves"}`, "info");
    $("rule-form").reset();
  } catch (err) { notice(err.message, "error"); }
  loadRules();
}

// --- wiring -------------------------------------------------------------------------------
$("filters").onsubmit = applyFilters;
$("f-clear").onclick = () => { $("filters").reset(); applyFilters(); };
document.querySelectorAll("#f-types input, #f-media-only, #f-since, #f-until").forEach((input) => input.addEventListener("change", () => applyFilters()));
$("all").onchange = () => {
  document.querySelectorAll("#messages input[type=checkbox]:not(:disabled)").forEach((box) => {
    if (box.checked !== $("all").checked) { box.checked = $("all").checked; box.onchange(); }
  });
};
$("select-matching").onclick = selectMatching;
$("download-matching").onclick = downloadMatching;
$("clear-selection").onclick = () => { state.selected.clear(); showSelected(); loadMessages(); };
$("prev").onclick = () => { state.offset = Math.max(0, state.offset - PAGE); loadMessages(); };
$("next").onclick = () => { state.offset += PAGE; loadMessages(); };
$("batches-newer").onclick = () => { state.batchesOffset = Math.max(0, state.batchesOffset - BATCH_PAGE); loadBatches(); };
$("batches-older").onclick = () => { state.batchesOffset += BATCH_PAGE; loadBatches(); };
$("start").onclick = startBatch;
$("links-form").onsubmit = selectLinked;
$("rule-form").onsubmit = createRule;
$("cancel").onclick = cancelBatch;
$("retry").onclick = retryBatch;
$("pause-resume").onclick = pauseOrResume;
$("batch-max-concurrent").onchange = () => steer("PATCH", "/api/media/batch/{id}", { max_concurrent: Number($("batch-max-concurrent").value) });
$("batch-priority").onchange = () => steer("PATCH", "/api/media/batch/{id}", { priority: $("batch-priority").value });
$("close-batch").onclick = () => {
  stopFollowing(); state.batchId = null; $("batch").hidden = true; history.replaceState(null, "", location.pathname);
  document.querySelectorAll("#batches li").forEach((li) => li.classList.remove("current"));
  $("batches-h").focus();
};
$("batches-h").tabIndex = -1;
state.ticker = setInterval(tick, 1000);
state.query = filterQuery();
showSelected();
loadMessages();
loadBatches();
loadRules();
const opened = /^#batch=(.+)$/.exec(location.hash);
if (opened) openBatch(decodeURIComponent(opened[1]), false);
