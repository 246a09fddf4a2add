// The call inspector: recent calls on the left (from GET /v1/calls), the selected call on
// the right (GET /v1/calls/{id}): a timeline of caller and bot speech on one time axis
// (seconds of call audio), what was said, barge-ins, DTMF, states, errors and where each
// answer's time went, over the call's stereo recording: a click on the timeline plays
// from there and a playhead follows. Plain ES module, no build step.
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "voicebot.apiToken";
const PAGE = 50;
const LIST_REFRESH_MS = 4000;
const LIVE_REFRESH_MS = 3000;
const TICK_STEPS = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800];
const MIN_TICK_PX = 64;
const MIN_PX_PER_S = 8; // a longer call scrolls sideways

const params = new URLSearchParams(location.search);
let token = params.get("token") || localStorage.getItem(TOKEN_KEY) || "";
if (params.get("token")) localStorage.setItem(TOKEN_KEY, token);

const view = {
  calls: new Map(), // id -> list row
  cursor: null, // next_cursor of the last page loaded
  selected: null, // id
  detail: null, // GET /v1/calls/{id}
  pxPerS: 0, // of the rendered timeline
  zoom: null, // px per second chosen with +/-; null: fit the width
  renders: 0,
  listSeq: 0,
};

class Unauthorized extends Error {}

// -- API ------------------------------------------------------------------------------------
function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const res = await fetch(path, { headers: authHeaders() });
  if (res.status === 401) {
    askToken(token ? "That token was refused." : "");
    throw new Unauthorized(path);
  }
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error(`${body.error || body.detail || "HTTP"} (${res.status})`);
  }
  return res.json();
}

const callPath = (id) => `/v1/calls/${encodeURIComponent(id)}`;

function askToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message || "This gateway needs its API token.";
  document.body.dataset.auth = "needed";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token-input").value.trim();
  localStorage.setItem(TOKEN_KEY, token);
  $("token-form").hidden = true;
  document.body.dataset.auth = "given";
  loadList(true);
  if (view.selected) selectCall(view.selected);
});

// -- formatting -----------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) node.append(c);
  }
  return node;
}

function clock(iso, withDate = false) {
  if (!iso) return "–";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit",
    hourCycle: "h23" });
  return withDate || !today ? `${d.toLocaleDateString()} ${time}` : time;
}

function span(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function at(t) {
  if (t === null || t === undefined) return "–";
  const m = Math.floor(t / 60);
  return `${m}:${(t - m * 60).toFixed(1).padStart(4, "0")}`;
}

const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} s`
  : `${Math.round(v)} ms`);
const reasonText = (r) => (r ? r.replaceAll("_", " ") : "");
const isLive = (c) => !c.ended_at;
const elapsed = (c) => (c.duration_s ?? (Date.now() - new Date(c.answered_at || c.started_at)) / 1000);

// -- the list -------------------------------------------------------------------------------
function listQuery(cursor) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (cursor) q.set("cursor", cursor);
  const text = $("q").value.trim();
  if (text) q.set("q", text);
  if ($("transport-filter").value) q.set("transport", $("transport-filter").value);
  if ($("reason-filter").value) q.set("end_reason", $("reason-filter").value);
  return `/v1/calls?${q}`;
}

async function loadList(reset, cursor = null) {
  const seq = ++view.listSeq;
  let page;
  try {
    page = await api(listQuery(cursor));
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("list-status").textContent = `Could not load calls: ${err.message}`;
    return;
  }
  if (seq !== view.listSeq) return; // a newer query was asked meanwhile
  $("list-status").textContent = "";
  if (reset) view.calls.clear();
  for (const c of page.calls) view.calls.set(c.id, c);
  if (reset || cursor) view.cursor = page.next_cursor;
  renderList();
}

async function refreshList() {
  // The first page again: new calls come in at the top, live ones get their new state.
  if (document.hidden) return;
  const seq = view.listSeq;
  const query = listQuery(null);
  try {
    const page = await api(query);
    if (seq !== view.listSeq || query !== listQuery(null)) return; // the filters changed
    for (const c of page.calls) view.calls.set(c.id, c);
    if (view.calls.size <= page.calls.length) view.cursor = page.next_cursor;
    renderList();
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("list-status").textContent = `Could not refresh: ${err.message}`;
  }
}

function renderList() {
  const calls = [...view.calls.values()].sort((a, b) =>
    (b.started_at || "").localeCompare(a.started_at || "") || b.id.localeCompare(a.id));
  const items = calls.map((c) => {
    const live = isLive(c);
    const button = el("button", {
      type: "button", class: "call-item", "aria-pressed": String(c.id === view.selected),
      data: { callId: c.id, live: String(live), transport: c.transport },
      onclick: () => selectCall(c.id),
    },
    el("span", { class: "ci-time", title: clock(c.started_at, true) }, clock(c.started_at)),
    el("span", { class: `badge t-${c.transport}` }, c.transport),
    el("span", { class: "ci-from", title: c.from || "" }, c.from || (c.direction === "outbound" ? `→ ${c.to || "?"}` : "unknown")),
    el("span", { class: "ci-duration" }, span(elapsed(c))),
    el("span", { class: "ci-turns", title: "turns" }, `${c.turns ?? 0}`),
    live ? el("span", { class: "badge live" }, "live")
      : el("span", { class: `reason r-${c.end_reason}` }, reasonText(c.end_reason)));
    return el("li", { class: c.id === view.selected ? "selected" : "" }, button);
  });
  $("call-list").replaceChildren(...items);
  $("list-empty").hidden = items.length > 0;
  $("more").hidden = !view.cursor;
  document.body.dataset.listed = String(items.length);
}

let searchTimer = null;
$("q").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadList(true), 300);
});
$("filters").addEventListener("submit", (e) => { e.preventDefault(); loadList(true); });
$("transport-filter").addEventListener("change", () => loadList(true));
$("reason-filter").addEventListener("change", () => loadList(true));
$("more").addEventListener("click", () => loadList(false, view.cursor));

// -- the selected call ----------------------------------------------------------------------
let liveTimer = null;

async function selectCall(id) {
  clearTimeout(liveTimer);
  view.selected = id;
  history.replaceState(null, "", `${location.pathname}${location.search}#call=${encodeURIComponent(id)}`);
  for (const b of document.querySelectorAll(".call-item")) {
    const on = b.dataset.callId === id;
    b.setAttribute("aria-pressed", String(on));
    b.parentElement.classList.toggle("selected", on);
  }
  let detail;
  try {
    detail = await api(callPath(id));
  } catch (err) {
    if (!(err instanceof Unauthorized)) {
      $("placeholder").hidden = false;
      $("placeholder").textContent = `Could not load call ${id}: ${err.message}`;
    }
    return;
  }
  if (view.selected !== id) return;
  view.detail = detail;
  $("placeholder").hidden = true;
  $("call-view").hidden = false;
  $("call-view").dataset.callId = id;
  renderHeader(detail);
  // A new call, or the recording of a live call that has ended since.
  if (loadedFor !== id || (detail.recording || null) !== loadedRecording) setRecording(detail);
  renderTimeline();
  renderTurns(detail);
  renderEvents(detail);
  clearTimeout(liveTimer);
  if (isLive(detail)) {
    liveTimer = setTimeout(() => { if (view.selected === id) selectCall(id); }, LIVE_REFRESH_MS);
  }
}

function renderHeader(c) {
  const s = c.summary || {};
  const item = (label, value, id) => value === null || value === undefined || value === "" ? null
    : el("div", { class: "hd-item", id }, el("dt", {}, label), el("dd", {}, value));
  $("call-header").replaceChildren(
    el("h2", { id: "call-id", title: c.id }, c.id),
    el("div", { class: "hd-parties" },
      el("span", { id: "call-from" }, c.from || "unknown caller"), " → ",
      el("span", { id: "call-to" }, c.to || "the bot"), " ",
      el("span", { class: `badge t-${c.transport}`, id: "call-transport" }, c.transport), " ",
      el("span", { class: "badge", id: "call-direction" }, c.direction || "inbound"), " ",
      isLive(c) ? el("span", { class: "badge live", id: "call-live" }, "live") : null),
    el("dl", { class: "hd-grid" },
      item("started", clock(c.started_at, true), "call-started"),
      item("answered", c.answered_at ? clock(c.answered_at) : "not answered", "call-answered"),
      item("ended", c.ended_at ? clock(c.ended_at) : "still going", "call-ended"),
      item("length", span(elapsed(c)), "call-duration"),
      item("end", reasonText(c.end_reason) || null, "call-end-reason"),
      item("transferred to", c.transfer_target, "call-transfer"),
      item("DTMF", c.dtmf || null, "call-dtmf"),
      item("turns", `${s.user_turns ?? "?"} caller · ${s.bot_turns ?? "?"} bot`, "call-turns"),
      item("barge-ins", s.interruptions ?? null, "call-interruptions"),
      item("voice to voice (median)", s.voice_to_voice_ms_median == null ? null
        : ms(s.voice_to_voice_ms_median), "call-v2v")));
}

// -- recording ------------------------------------------------------------------------------
const player = $("player");
let recordingUrl = null;
let loadedFor = null; // the call and recording the player has
let loadedRecording = null;

function setRecording(c) {
  loadedFor = c.id;
  loadedRecording = c.recording || null;
  document.body.dataset.audio = c.recording ? "loading" : "none";
  if (recordingUrl && recordingUrl.startsWith("blob:")) URL.revokeObjectURL(recordingUrl);
  recordingUrl = null;
  player.pause();
  player.removeAttribute("src");
  player.load();
  $("no-recording").hidden = !!c.recording;
  player.hidden = !c.recording;
  if (!c.recording) return;
  // <audio> cannot send a header: the token goes in the query (the API takes ?token= like
  // /ws does); if that is refused the file is fetched with the header instead.
  const join = c.recording.includes("?") ? "&" : "?";
  const url = token ? `${c.recording}${join}token=${encodeURIComponent(token)}` : c.recording;
  recordingUrl = url;
  player.dataset.fallback = "";
  player.src = url;
}

player.addEventListener("error", async () => {
  const c = view.detail;
  if (!c || !c.recording || player.dataset.fallback || !token) return;
  player.dataset.fallback = "blob";
  try {
    const res = await fetch(c.recording, { headers: authHeaders() });
    if (!res.ok) return;
    recordingUrl = URL.createObjectURL(await res.blob());
    player.src = recordingUrl;
  } catch { /* the player shows its own error */ }
});

player.addEventListener("loadedmetadata", () => {
  document.body.dataset.audio = "ready";
  if (isFinite(player.duration) && player.duration > timelineLength(view.detail) + 0.05) renderTimeline();
});

function seek(t, play = true) {
  const tt = Math.max(0, t);
  $("timeline").dataset.seekT = tt.toFixed(3);
  showCursor(tt);
  if (!view.detail?.recording || player.hidden) return;
  player.currentTime = tt;
  if (play) player.play().catch(() => {});
}

function showCursor(t) {
  const cursor = $("seek-cursor");
  cursor.hidden = false;
  cursor.style.left = `${t * view.pxPerS}px`;
}

let raf = 0;
function followPlayhead() {
  const head = $("playhead");
  const t = player.currentTime;
  head.hidden = false;
  head.style.left = `${t * view.pxPerS}px`;
  head.dataset.t = t.toFixed(3);
  for (const row of document.querySelectorAll("#turns tbody tr")) {
    row.classList.toggle("playing", t >= +row.dataset.start && t < +row.dataset.end);
  }
  const scroll = $("timeline-scroll");
  const x = head.offsetLeft + $("overlay").offsetLeft;
  if (!player.paused && (x < scroll.scrollLeft || x > scroll.scrollLeft + scroll.clientWidth - 24)) {
    scroll.scrollLeft = Math.max(0, x - scroll.clientWidth / 4);
  }
  raf = player.paused ? 0 : requestAnimationFrame(followPlayhead);
}
for (const kind of ["play", "seeked", "timeupdate"]) {
  player.addEventListener(kind, () => { if (!raf) followPlayhead(); });
}

// -- the timeline ---------------------------------------------------------------------------
function timelineLength(c) {
  if (!c) return 1;
  let end = c.duration_s || 0;
  for (const t of c.turns || []) end = Math.max(end, t.end_s ?? 0, t.start_s ?? 0);
  for (const e of c.events || []) end = Math.max(end, e.t ?? 0);
  if (isFinite(player.duration) && player.duration > 0) end = Math.max(end, player.duration);
  return Math.max(1, end);
}

function tickStep(pxPerS) {
  return TICK_STEPS.find((s) => s * pxPerS >= MIN_TICK_PX) || TICK_STEPS[TICK_STEPS.length - 1];
}

const tickLabel = (t) => (t >= 60 ? span(t) : `${+t.toFixed(1)}s`);

function pos(node, start, end, px) {
  node.style.left = `${start * px}px`;
  if (end !== undefined) node.style.width = `${Math.max(2, (end - start) * px)}px`;
  return node;
}

// Where the caller's speech was (speech_start onset .. speech_end), turn or not.
function speechSegments(events) {
  const out = [];
  let onset = null;
  for (const e of events) {
    if (e.type === "speech_start" && onset === null) onset = e.onset ?? e.t;
    else if (e.type === "speech_end" && onset !== null) { out.push([onset, e.t]); onset = null; }
  }
  return out;
}

// The bot's words the caller heard (a prefix of the turn's text) and the rest.
function heardSplit(turn) {
  if (turn.speaker !== "bot" || !turn.interrupted) return [turn.heard ?? turn.text, ""];
  const heard = (turn.heard || "").trim();
  if (turn.text.startsWith(heard)) return [heard, turn.text.slice(heard.length)];
  const words = turn.text.split(/\s+/);
  const said = heard.split(/\s+/).filter(Boolean);
  let k = 0;
  while (k < said.length && k < words.length && words[k] === said[k]) k++;
  return [words.slice(0, k).join(" "), ` ${words.slice(k).join(" ")}`];
}

// The answer's wait after the caller stopped, split by stage (ms), in time order.
function latencyStages(l) {
  const total = l.total_ms ?? 0;
  const v2v = l.voice_to_voice_ms ?? total;
  const stt = l.stt_wait_ms ?? 0;
  const llm = Math.max(stt, l.llm_wait_ms ?? stt);
  const tts = Math.max(llm, l.tts_wait_ms ?? llm);
  return [
    ["endpoint", Math.max(0, v2v - total), "end of turn (VAD end to speech_end)"],
    ["stt", stt, "STT"],
    ["llm", llm - stt, "LLM first sentence"],
    ["tts", tts - llm, "TTS first audio"],
    ["send", Math.max(0, total - tts), "to the first frame sent"],
  ];
}

function latencyTitle(l) {
  const parts = latencyStages(l).map(([, v, label]) => `${label}: ${ms(v)}`);
  return `voice to voice ${ms(l.voice_to_voice_ms)}${l.speculative ? " (speculative)" : ""}\n${parts.join("\n")}`;
}

function renderTimeline() {
  const c = view.detail;
  if (!c) return;
  const length = timelineLength(c);
  const scroll = $("timeline-scroll");
  const labelW = $("lane-user").offsetLeft || 72;
  const fit = Math.max(MIN_PX_PER_S, (scroll.clientWidth - labelW - 24) / length);
  const px = view.zoom ? Math.max(fit, view.zoom) : fit;
  view.pxPerS = px;
  const timeline = $("timeline");
  timeline.style.width = `${labelW + length * px + 16}px`;
  timeline.dataset.pxPerS = px.toFixed(4);
  timeline.dataset.length = length.toFixed(3);
  const turns = c.turns || [];
  const events = c.events || [];

  // axis
  const step = tickStep(px);
  const ticks = [];
  for (let t = 0; t <= length + 1e-6; t += step) {
    ticks.push(pos(el("div", { class: "tick", data: { t: String(+t.toFixed(3)) } },
      el("span", {}, tickLabel(t))), t, undefined, px));
  }
  $("axis").replaceChildren(...ticks);

  // state strip
  const states = events.filter((e) => e.type === "state");
  $("state-strip").replaceChildren(...states.map((e, i) => {
    const end = i + 1 < states.length ? states[i + 1].t : length;
    return pos(el("div", {
      class: `state-seg s-${e.state}`, title: `${e.state.replaceAll("_", " ").toLowerCase()} ${at(e.t)}–${at(end)}`,
      data: { state: e.state, start: String(e.t), end: String(end) },
    }), e.t, end, px);
  }));

  // lanes
  const segs = speechSegments(events).map(([s, e]) => pos(el("div", {
    class: "seg", title: `speech ${at(s)}–${at(e)}`, data: { start: String(s), end: String(e) },
  }), s, e, px));
  const bars = { user: [], bot: [] };
  const botTurns = turns.filter((t) => t.speaker === "bot");
  for (const t of turns) {
    if (t.start_s === null || t.start_s === undefined) continue;
    const end = t.end_s ?? t.start_s;
    const [heard, rest] = heardSplit(t);
    const bar = pos(el("div", {
      class: `bar bar-${t.speaker}${t.interrupted ? " interrupted" : ""}`,
      title: `${t.speaker === "user" ? "caller" : "bot"} ${at(t.start_s)}–${at(end)}: ${t.text}`,
      data: { turnIdx: String(t.idx), speaker: t.speaker, start: String(t.start_s), end: String(end) },
    }), t.start_s, end, px);
    if (t.interrupted) {
      bar.append(el("span", { class: "cut", title: "cut off by the caller" }));
      // What was not said, estimated from the share of its words the caller heard.
      const share = heard.length / Math.max(1, heard.length + rest.length);
      const next = botTurns.find((b) => b.start_s > t.start_s);
      let ghost = share > 0 ? (end - t.start_s) * (1 / share - 1) : 1.5;
      if (next) ghost = Math.min(ghost, next.start_s - end);
      if (ghost > 0.05) bars.bot.push(pos(el("div", { class: "ghost", title: `not said: ${rest.trim()}` }), end, end + ghost, px));
    }
    (bars[t.speaker] || bars.bot).push(bar);
  }
  $("lane-user").replaceChildren(...segs, ...bars.user);
  $("lane-bot").replaceChildren(...bars.bot);

  // latency per answer, at its place: from the caller's VAD end to the first frame sent
  const lat = [];
  for (const t of botTurns) {
    const l = t.latency;
    if (!l || l.vad_speech_end === null || l.vad_speech_end === undefined) continue;
    const box = el("div", {
      class: "latency", title: latencyTitle(l),
      data: { turnIdx: String(t.idx), v2v: String(l.voice_to_voice_ms ?? "") },
    });
    for (const [kind, v] of latencyStages(l)) {
      box.append(el("i", { class: `lat-seg lat-${kind}`, style: { width: `${(v / 1000) * px}px` } }));
    }
    box.append(el("span", { class: "lat-label" }, ms(l.voice_to_voice_ms)));
    lat.push(pos(box, l.vad_speech_end, undefined, px));
  }
  $("lane-latency").replaceChildren(...lat);

  // markers
  const markers = [];
  const mark = (e, kind, label, title) => markers.push(pos(el("div", {
    class: `marker m-${kind}`, title, data: { t: String(e.t), kind },
  }, el("span", {}, label)), e.t, undefined, px));
  for (const e of events) {
    if (e.type === "interrupted") mark(e, "barge", "⚡", `barge-in at ${at(e.t)}: bot silenced in ${ms(e.latency_ms)}`);
    else if (e.type === "dtmf") mark(e, "dtmf", e.digit, `DTMF ${e.digit} at ${at(e.t)}`);
    else if (e.type === "error") mark(e, "error", "!", `error at ${at(e.t)}: ${e.message}`);
    else if (e.type === "transferred") mark(e, "transfer", "↗", `transferred to ${e.target} at ${at(e.t)}${e.status ? ` (${e.status} ${e.reason})` : ""}${e.confirmed === false ? ", unconfirmed" : ""}`);
    else if (e.type === "transfer_failed") mark(e, "transfer-failed", "↯", `transfer to ${e.target} failed at ${at(e.t)}: ${e.status ?? ""} ${e.reason}`.trim());
    else if (e.type === "call_ended") mark(e, "end", "■", `call ended (${reasonText(e.reason)}) at ${at(e.t)}`);
  }
  $("markers").replaceChildren(...markers);

  renderBubbles(turns, px, length);
  if (!player.paused || player.currentTime > 0) followPlayhead();
  if ($("timeline").dataset.seekT) showCursor(+$("timeline").dataset.seekT);
  view.renders += 1;
  timeline.dataset.renders = String(view.renders);
}

function bubbleText(t) {
  const [heard, rest] = heardSplit(t);
  return [el("span", { class: "heard" }, heard), rest ? el("span", { class: "unheard", title: "not heard: cut off" }, rest) : null];
}

// What was said, under the lanes: the caller's bubbles in rows of their own, then the bot's,
// each bubble from its turn's start, 260 px wide at most (on a long call's timeline, as wide
// as the time to that speaker's next turn, 120 px at least), four lines at most (the whole
// text is in its title and in the table).
function renderBubbles(turns, px, length) {
  const box = $("bubbles");
  const placed = turns.filter((t) => t.start_s !== null && t.start_s !== undefined);
  const bubbles = placed.map((t) => {
    const next = placed.find((o) => o.speaker === t.speaker && o.start_s > t.start_s);
    // A call that fits the width has room enough; a long one makes bubbles narrow.
    const room = next && px < 24 ? (next.start_s - t.start_s) * px - 6 : 260;
    return el("div", {
      class: `bubble b-${t.speaker}${t.interrupted ? " interrupted" : ""}`, title: t.text,
      data: { turnIdx: String(t.idx), speaker: t.speaker, start: String(t.start_s) },
      style: { maxWidth: `${Math.round(Math.min(260, Math.max(120, room)))}px` },
    }, el("span", { class: "bubble-text" }, ...bubbleText(t)));
  });
  box.replaceChildren(...bubbles);
  const width = length * px;
  let top = 0;
  for (const speaker of ["user", "bot"]) {
    // Each bubble in the first row of its track whose last bubble ends before it.
    const rows = [];
    for (const b of bubbles.filter((x) => x.dataset.speaker === speaker)) {
      const w = b.offsetWidth;
      const left = Math.max(0, Math.min(+b.dataset.start * px, width - w));
      let row = rows.findIndex((r) => r.right + 6 <= left);
      if (row < 0) { rows.push({ right: 0, height: 0, items: [] }); row = rows.length - 1; }
      rows[row].right = left + w;
      rows[row].height = Math.max(rows[row].height, b.offsetHeight);
      rows[row].items.push(b);
      b.style.left = `${left}px`;
    }
    for (const r of rows) {
      for (const b of r.items) b.style.top = `${top}px`;
      top += r.height + 6;
    }
  }
  box.style.height = `${Math.max(24, top)}px`;
}

$("timeline").addEventListener("click", (e) => {
  if (!view.pxPerS) return;
  const x = e.clientX - $("axis").getBoundingClientRect().left;
  if (x < 0) return; // on a lane's label
  seek(x / view.pxPerS);
});

// -- turn table and events ------------------------------------------------------------------
function renderTurns(c) {
  const turns = c.turns || [];
  const maxV2v = Math.max(1, ...turns.map((t) => t.latency?.voice_to_voice_ms ?? 0));
  $("turns").tBodies[0].replaceChildren(...turns.map((t) => {
    const l = t.latency;
    const breakdown = l ? el("div", { class: "lat-cell", title: latencyTitle(l) },
      el("span", { class: "lat-num" }, ms(l.voice_to_voice_ms)),
      el("span", { class: "lat-bar" }, ...latencyStages(l).map(([kind, v]) =>
        el("i", { class: `lat-seg lat-${kind}`, style: { width: `${(100 * v) / maxV2v}%` } })))) : "";
    return el("tr", {
      class: `turn t-${t.speaker}${t.interrupted ? " interrupted" : ""}`,
      data: { turnIdx: String(t.idx), speaker: t.speaker, start: String(t.start_s ?? 0), end: String(t.end_s ?? 0) },
      onclick: () => seek(t.start_s ?? 0),
    },
    el("td", { class: "turn-at" }, at(t.start_s)),
    el("td", { class: "turn-who" }, t.speaker === "user" ? "caller" : "bot"),
    el("td", { class: "turn-text" }, ...bubbleText(t), t.interrupted ? el("span", { class: "badge cut-badge" }, "cut off") : null),
    el("td", { class: "turn-latency" }, breakdown));
  }));
}

function renderEvents(c) {
  const skip = new Set(["type", "call_id", "t"]);
  $("events").replaceChildren(...(c.events || []).map((e) => {
    const rest = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    return el("li", { data: { type: e.type, t: String(e.t) }, onclick: () => seek(e.t) },
      el("span", { class: "ev-t" }, at(e.t)), el("span", { class: "ev-type" }, e.type), rest.join(" "));
  }));
}

// -- zoom, resize, start --------------------------------------------------------------------
$("zoom-in").addEventListener("click", () => { view.zoom = view.pxPerS * 1.6; renderTimeline(); });
$("zoom-out").addEventListener("click", () => { view.zoom = view.pxPerS / 1.6; renderTimeline(); });
$("zoom-fit").addEventListener("click", () => { view.zoom = null; renderTimeline(); });
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(renderTimeline, 100);
});

await loadList(true);
const fromHash = new URLSearchParams(location.hash.slice(1)).get("call");
if (fromHash) selectCall(fromHash);
setInterval(refreshList, LIST_REFRESH_MS);
setInterval(() => { if (view.calls.size) renderList(); }, 1000 * 15);
