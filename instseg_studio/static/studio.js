// instseg studio: the page. Plain JavaScript, no build step; the server's JSON API is described in app.py.
// Image coordinates: pixels, x right, y down, pixel centres at integers (the SVG viewBox starts at -0.5).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#ff3b3b", "#ff9f1a", "#2f9bff", "#b45cff", "#19d3c5", "#ffe14d", "#ff5cc8", "#7dff5c",
                 "#ffffff", "#a0a0ff", "#ffb3b3", "#33cccc"];
const DOUBLE_CLICK_MS = 500;     // a second click this soon ...
const SAME_POINT_PX = 3;         // ... and this close (screen pixels) to the last one is the same click
const DISTINCT_PX = 2;           // extreme points closer than this (image pixels) are one point, whatever the zoom
                                 // (the server's segmenters.MIN_POINT_DISTANCE: it refuses them too)
const RETRY_MS = [250, 500, 1000, 2000];   // back-off between attempts to save after a lost connection
// How long the page waits for each kind of request (ms). A server that hangs (stopped, deadlocked) answers nothing,
// ever: past its limit a request is abandoned – its fetch aborted, so a late answer never reaches the page – and
// the page says that the server does not answer, with everything as it was before the request. Generous against
// the normal durations (docs/studio.md, Speed); the browser tests shorten them (window.studioLimits).
const LIMITS = {
  save: 5000,         // PUT of a frame's objects (~10 ms): then retried in order (Saving, docs/studio.md)
  segment: 5000,      // 4th click, correction click, moved extreme point, tolerance: ~20 ms in-process; the
                      // service node's own limit is 10 s, so 12 s with it (start())
  frame: 10000,       // a frame change: its objects and its image (~20-60 ms, goal 100 ms)
  brush: 10000,       // a brush or eraser stroke (milliseconds)
  propagate: 30000,   // C: every object of the previous frame segmented again (~20 ms each)
  proposals: 30000,   // P: ~1 s per 2 MP frame for a streaming model on the CPU, more the first time
  background: 10000,  // start, warming a frame, the track list, a frame read again
  // export: no limit (a big session takes long, and the server finishes it anyway); while it runs the page asks
  // the server every `aliveEvery` ms whether it answers (within `alive` ms) and says so when it does not
  alive: 5000,
  aliveEvery: 5000,
};
window.studioLimits = LIMITS;
const ATTRIBUTES = ["occluded", "truncated", "crowd"];
// ?warm=0: the page before issue 36 (no warming, the next frame prefetched at once), bench_studio's baseline
const WARM = new URLSearchParams(window.location.search).get("warm") !== "0";

const state = {
  info: null, timestamps: [], labelled: new Set(), index: 0, frame: null, objects: [], version: 0,
  selected: null, explicit: false,   // the selected object; explicit: chosen by the operator (list, Tab, Ctrl+click)
  clicks: [], lastClick: null, proposals: [], suppressed: 0, proposal: null, hoverProposal: null, scoreMin: 0.5,
  undo: [], redo: [], drag: null, busy: 0, newClass: null, nextTrack: 1,
  view: { zoom: 1, x: 0, y: 0 }, pan: null, brush: null, brushRadius: 6, stroke: null,
  writes: [],        // changes not yet saved, in the order they were made: {index, objects}
  failure: null,     // why the last save failed: {reason, retrying}
  stale: null,       // another tab or window changed the session: {server, seen}
};
window.studioState = state;         // for the browser tests and the benchmark
window.studioTimings = [];          // {what, ms}: measured in the page (bench/bench_studio.py reads them)

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
class ConnectionError extends Error {}   // no answer at all: the server is away (killed, restarting, unreachable)
class NoAnswerError extends ConnectionError {   // no answer within the request's time limit: the server may hang
  constructor(ms) { super(`no answer within ${ms / 1000} s`); this.ms = ms; }
}

async function api(method, path, body, timeoutMs = 0) {
  // timeoutMs: give up waiting (a server that hangs answers nothing, ever): the fetch is aborted, so its answer,
  // should it come later, is never seen (nothing is applied late, twice or out of order); NoAnswerError
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const abort = timeoutMs ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), timeoutMs) : null;
  if (abort) options.signal = abort.signal;
  try {
    let response;
    try { response = await fetch(path, options); } catch (error) {
      if (abort && abort.signal.aborted) throw new NoAnswerError(timeoutMs);
      throw new ConnectionError(error.message || "no connection");
    }
    const data = await response.json().catch(() => ({}));
    // the limit passed while the body was read: an answer cut short is no answer (never taken as an empty one)
    if (abort && abort.signal.aborted) throw new NoAnswerError(timeoutMs);
    serverAnswered();
    if (!response.ok) throw new ApiError(response.status, data.error || response.statusText);
    return data;
  } finally { clearTimeout(timer); }
}

function withinLimit(promise, ms) {   // `promise`, or NoAnswerError once `ms` have passed (for what fetch does not load)
  let timer;
  const limit = new Promise((_, reject) => { timer = setTimeout(() => reject(new NoAnswerError(ms)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function showMessage(text, kind = "error", connection = false) {
  // connection: the message is about a server that does not answer; it goes once the server answers again
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
  box.dataset.connection = connection && text ? "true" : "";
}

function serverAnswered() {   // any answer: what was said about an unreachable server no longer applies
  if ($("message").dataset.connection === "true") showMessage("");
}

function showError(error, notDone = "") {
  // a refusal says why; no answer at all is a connection message, with what was not done (`notDone`: "C copied
  // nothing; press C again") once it answers
  if (error instanceof ConnectionError) {
    showMessage(`the studio server does not answer (${error.message})` +
                (notDone ? `: ${notDone} once it answers` : ""), "error", true);
  } else showMessage(error.message || String(error));
}

function pad(value, width = 2) { return String(value).padStart(width, "0"); }

function humanTime(ns) {   // receive time in UTC with milliseconds, and the offset from the bag's first frame
  const ms = Math.round(ns / 1e6);
  const date = new Date(ms);
  const clock = `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} ` +
    `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}.` +
    `${pad(date.getUTCMilliseconds(), 3)} UTC`;
  const offset = (ns - state.timestamps[0]) / 1e9;
  return `${clock} (+${offset.toFixed(2)} s)`;
}

function unsavedFrames() { return [...new Set(state.writes.map((w) => w.index))].sort((a, b) => a - b); }

function setStatus() {
  const n = state.timestamps.length;
  $("frame-label").textContent = n ? `frame ${state.index + 1} / ${n}  ·  ${humanTime(state.timestamps[state.index])}`
    : "";
  const pending = state.writes.length;
  let text;
  if (state.stale) text = "NOT SAVED – this tab is out of date, reload";
  else if (pending && state.failure && state.failure.retrying) text = `NOT SAVED – retrying (${pending} change` +
    `${pending > 1 ? "s" : ""})`;
  else if (pending && state.failure) text = `NOT SAVED (${unsavedFrames().length} frame` +
    `${unsavedFrames().length > 1 ? "s" : ""})`;
  else if (pending) text = "saving…";
  else text = `saved v${state.version}`;
  const mode = state.brush ? `  ·  ${state.brush} r=${state.brushRadius} px (B/X to leave, [ ] size)` : "";
  $("status").textContent = (state.busy ? "working…  " : "") + text +
    (state.clicks.length ? `  ·  click ${state.clicks.length}/4` : "") + mode;
  $("status").classList.toggle("unsaved", pending > 0 || !!state.stale);
}

function busy(delta) { state.busy += delta; setStatus(); }

function classColor(name) {
  const k = state.info ? state.info.classes.indexOf(name) : 0;
  return PALETTE[(k < 0 ? 0 : k) % PALETTE.length];
}

function clone(objects) { return JSON.parse(JSON.stringify(objects)); }

function canonical(value) {   // JSON with sorted keys: equal for equal content, whatever the key order
  return JSON.stringify(value, (key, v) => (v && typeof v === "object" && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]])) : v));
}

function offeredAttributes(name) {
  const table = state.info && state.info.attributes;
  return table && table[name] ? table[name] : ATTRIBUTES;
}

// ---- saving, undo, redo -------------------------------------------------------------------------------
// Every change goes into state.writes and is saved in order, each write naming the version this tab's state
// was built on (state.version: the version of this tab's last saved write, or of the page load). A write the
// server refuses as stale (409: another tab saved in between) stops saving: the tab is told and offered a
// reload, nothing is overwritten. A lost connection or a failing server is retried with back-off, in order;
// a disk that refuses the save (507) waits for "Retry saving". Undo and redo are changes like any other.

let writer = null;        // the running save loop
let wake = null;          // resolves the back-off wait early ("Retry saving")

function showUnsaved() {
  const frames = unsavedFrames();
  const failed = frames.length && state.failure;
  $("unsaved").hidden = !failed;
  if (failed) {
    const retrying = state.failure.retrying ? " Retrying automatically;" : "";
    $("unsaved-text").textContent = `${state.failure.reason}.${retrying} unsaved changes on frame` +
      `${frames.length > 1 ? "s" : ""} ${frames.map((k) => k + 1).join(", ")} are kept in this page until they ` +
      "are saved.";
  }
  $("stale").hidden = !state.stale;
  if (state.stale) {
    $("stale-text").textContent = `Another tab or window changed this session (it is at version ` +
      `${state.stale.server}, this tab saw version ${state.stale.seen}). This tab no longer saves: its undo ` +
      `history and its view were built on the old state.` +
      (frames.length ? ` Its unsaved changes on frame${frames.length > 1 ? "s" : ""} ` +
                       `${frames.map((k) => k + 1).join(", ")} were not written.` : "") + " Reload to continue.";
  }
  setStatus();
}

function markStale(server) {
  if (!state.stale) state.stale = { server, seen: state.version };
  showUnsaved();
}

function pendingObjects(index) {   // the frame's objects as this tab last changed them, when not yet saved
  for (let k = state.writes.length - 1; k >= 0; k--) if (state.writes[k].index === index) return state.writes[k].objects;
  return null;
}

function commit(objects, { record = true, index = state.index } = {}) {
  const before = clone(state.objects);
  const after = clone(objects);
  if (index === state.index) { state.objects = after; render(); }
  if (record) { state.undo.push({ index, before, after }); state.redo = []; }
  state.writes.push({ index, objects: after });
  setStatus();
  return saveAll();
}

function saveAll() {
  if (!writer) writer = writeLoop().finally(() => { writer = null; });
  return writer;
}

function backOff(attempt) {
  return new Promise((resolve) => {
    wake = resolve;
    setTimeout(resolve, RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]);
  });
}

function savedAs(write, version, nextTrack) {   // the first write of the queue is saved as `version`
  state.writes.shift();
  state.version = version;
  if (nextTrack) state.nextTrack = Math.max(state.nextTrack, nextTrack);
  if (write.objects.length) state.labelled.add(write.index); else state.labelled.delete(write.index);
  state.failure = null;
  drawTimeline();
}

function sameObjects(saved, sent) {   // the saved objects are the sent ones (the server rounds to 0.01 px)
  const key = (objects) => canonical(objects.map((o) => [o.id, o.class, o.track_id, !!o.hidden, !!o.excluded,
    o.polygon.map(([x, y]) => [Math.round(x * 100), Math.round(y * 100)])]));
  return key(saved) === key(sent);
}

async function landed(write) {
  // after a lost answer, a 409 may be this write itself: it reached the disk, its answer did not reach the page.
  // It did when the session is exactly one version on and the frame holds exactly what was sent
  try {
    const frame = await api("GET", `/api/frames/${write.index}`, undefined, LIMITS.background);
    return frame.version === state.version + 1 && sameObjects(frame.objects, write.objects) ? frame.version : null;
  } catch (error) { return null; }
}

async function writeLoop() {
  let attempt = 0;
  while (state.writes.length && !state.stale) {
    const write = state.writes[0];
    busy(1);
    try {
      const result = await api("PUT", `/api/frames/${write.index}/objects`,
                               { base_version: state.version, objects: write.objects }, LIMITS.save);
      savedAs(write, result.version, result.next_track_id);
      attempt = 0;
    } catch (error) {
      const version = error.status === 409 && write.unanswered ? await landed(write) : null;
      if (version !== null) {
        savedAs(write, version, null);
        attempt = 0;
      } else if (error.status === 409) {
        markStale(Number((/at version (\d+)/.exec(error.message) || [])[1]) || "?");
        showMessage(error.message);
      } else if (error.status === 400 || error.status === 413 || error.status === 422) {
        state.writes.shift();   // a change the server cannot take: dropped, the frame shown as saved
        showMessage(`not saved: ${error.message}`);
        if (write.index === state.index) refreshObjects();
      } else if (error.status === 507) {   // the disk refuses: kept until "Retry saving"
        state.failure = { reason: error.message, retrying: false };
        busy(-1);
        showUnsaved();
        return;
      } else {   // a lost connection, a server that is restarting or failing: kept and retried in order
        const reason = error instanceof ApiError ? `not saved: ${error.message}`
          : error instanceof NoAnswerError ? `not saved: the studio server did not answer within ${error.ms / 1000} s`
            : "not saved: the studio server does not answer";
        write.unanswered = true;
        state.failure = { reason, retrying: true };
        showUnsaved();
        busy(-1);
        await backOff(attempt++);
        continue;
      }
    }
    busy(-1);
    showUnsaved();
  }
  showUnsaved();
  if (!state.writes.length) drawTracks();
}

function retryUnsaved() {
  if (wake) wake();
  if (state.failure && !state.failure.retrying) state.failure.retrying = true;
  return saveAll();
}

async function refreshObjects() {
  const frame = await api("GET", `/api/frames/${state.index}`, undefined, LIMITS.background).catch(() => null);
  if (frame && frame.index === state.index && !pendingObjects(state.index)) { state.objects = frame.objects; render(); }
}

async function undoRedo(from, to, pick, what) {
  if (state.stale) { showUnsaved(); showMessage(`${what} refused: this tab is out of date; reload the page`); return; }
  const entry = from.pop();
  if (!entry) { showMessage(`nothing to ${what}`, "info"); return; }
  if (entry.index !== state.index) await goTo(entry.index);
  if (state.index !== entry.index || !state.frame || state.frame.index !== entry.index) {
    // its frame could not be shown (the server does not answer): nothing is done, the entry stays to be done
    // again (before, the other frame's objects were written onto the frame shown)
    from.push(entry);
    if ($("message").dataset.connection === "true") {
      showMessage(`${what} not done: ${$("message").textContent}; press it again once it answers`, "error", true);
    }
    return;
  }
  to.push(entry);
  showMessage(`${what} on frame ${entry.index + 1}`, "info");
  await commit(pick(entry), { record: false, index: entry.index });
}
const undo = () => undoRedo(state.undo, state.redo, (e) => e.before, "undo");
const redo = () => undoRedo(state.redo, state.undo, (e) => e.after, "redo");

// ---- frames ---------------------------------------------------------------------------------------------

const prefetch = new Image();
const PREFETCH_IDLE_MS = 800;
let prefetchTimer = null;

// The likely next frame's image into the browser's cache, fetched when the operator has not clicked for a while:
// reading, encoding and decoding a 2 MP frame takes the CPU the first object's segmentation needs (on 2 cores
// this made the first object of a frame 2-3x slower when the prefetch started as the frame was shown)
function prefetchWhenIdle() {
  clearTimeout(prefetchTimer);
  const index = state.index;
  prefetchTimer = setTimeout(() => {
    const next = `/api/frames/${index + 1}/image`;
    if (state.index === index && index + 1 < state.timestamps.length && !prefetch.src.endsWith(next)) {
      prefetch.src = next;
    }
  }, WARM ? PREFETCH_IDLE_MS : 0);
}

let leftBehind = null;   // the shown frame's clicks, selection and proposals while another frame loads

async function goTo(index) {
  const n = state.timestamps.length;
  if (!n) return;
  index = Math.max(0, Math.min(n - 1, index));
  const started = performance.now();
  if (state.frame && state.index === state.frame.index) {   // leaving the shown frame: put back if the load fails
    leftBehind = { index: state.index, clicks: state.clicks, proposals: state.proposals, proposal: state.proposal,
                   suppressed: state.suppressed, selected: state.selected, explicit: state.explicit };
  }
  state.index = index;
  state.clicks = [];
  state.proposals = [];
  state.proposal = null;
  state.suppressed = 0;
  state.selected = null;
  $("frame-slider").value = index;
  busy(1);
  try {
    const image = $("frame-image");
    const loaded = new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new ConnectionError("its image did not load"));
    });
    // both settled before a failure is shown: the server's reason (a frame it cannot read) is preferred to the
    // image's, and no answer arrives after the message (which would take a connection message away again). Both
    // within the frame's time limit: an image still loading then is cancelled below (its src set back)
    const settled = await Promise.allSettled([api("GET", `/api/frames/${index}`, undefined, LIMITS.frame),
                                              (image.src = `/api/frames/${index}/image`,
                                               withinLimit(loaded, LIMITS.frame))]);
    const failures = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
    if (failures.length) throw failures.find((e) => e instanceof ApiError) || failures[0];
    const frame = settled[0].value;
    if (state.index !== index) return;   // the operator moved on meanwhile
    leftBehind = null;
    // the server moved on without this tab: another tab saved. Its version is NOT taken over: this tab's
    // writes keep naming the version they were built on, and are refused
    if (frame.version > state.version && !state.writes.length && !writer) markStale(frame.version);
    state.frame = frame;
    // a change not yet saved is shown instead of the saved objects: moving on never loses it
    const pending = pendingObjects(index);
    state.objects = pending ? clone(pending) : frame.objects;
    const svg = $("overlay");
    svg.setAttribute("viewBox", `-0.5 -0.5 ${frame.width} ${frame.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    fitImage();
    if (!state.stale) showMessage("");
    render();
    window.studioTimings.push({ what: "frame", ms: performance.now() - started });
    // warm the server for this frame (decoded frame, the network) before the first click; the next frame's image
    // is prefetched once the operator pauses (prefetchWhenIdle)
    if (WARM) api("POST", `/api/frames/${index}/warm`, {}, LIMITS.background).catch(() => {});
    prefetchWhenIdle();
  } catch (error) {
    if (error instanceof ApiError) showMessage(error.message);
    else showMessage(`frame ${index + 1} could not be shown: the studio server does not answer (${error.message})`,
                     "error", true);
    if (state.index === index && state.frame) {   // stay on the frame that is shown: clicks must match the image
      state.index = state.frame.index;
      if (leftBehind && leftBehind.index === state.index) {   // as it was: its kept clicks, selection, proposals
        const { index: _, ...kept } = leftBehind;
        Object.assign(state, kept);
      }
      leftBehind = null;
      $("frame-slider").value = state.index;
      $("frame-image").src = `/api/frames/${state.index}/image`;
      render();
    }
  } finally { busy(-1); }
}

function fitImage() {   // the whole frame in the stage, scaled up or down, aspect kept
  if (!state.frame) return;
  const stage = $("stage");
  const width = stage.clientWidth - 12, height = stage.clientHeight - 12;
  const scale = Math.max(0.05, Math.min(width / state.frame.width, height / state.frame.height));
  const image = $("frame-image");
  image.style.width = `${Math.floor(state.frame.width * scale)}px`;
  image.style.height = `${Math.floor(state.frame.height * scale)}px`;
}

function drawTimeline() {
  const canvas = $("timeline-marks");
  canvas.width = canvas.clientWidth || 800;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const n = Math.max(1, state.timestamps.length - 1);
  context.fillStyle = "#ffd400";
  for (const k of state.labelled) context.fillRect(Math.round((k / n) * (canvas.width - 2)), 0, 2, canvas.height);
}

// ---- geometry -----------------------------------------------------------------------------------------

function imagePoint(event) {
  const svg = $("overlay");
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  const p = point.matrixTransform(svg.getScreenCTM().inverse());
  return [Math.round(p.x), Math.round(p.y)];
}

function insideFrame([x, y]) {
  return [Math.max(0, Math.min(state.frame.width - 1, x)), Math.max(0, Math.min(state.frame.height - 1, y))];
}

function pointInPolygon([x, y], polygon) {
  let inside = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i], [xj, yj] = polygon[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function nearestOnSegment([x, y], [ax, ay], [bx, by]) {
  const dx = bx - ax, dy = by - ay;
  const t = dx || dy ? Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy))) : 0;
  return [Math.round(ax + t * dx), Math.round(ay + t * dy)];
}

function screenScale() {   // image pixels per screen pixel
  const shown = $("overlay").getBoundingClientRect().width;
  return state.frame ? state.frame.width / Math.max(1, shown) : 1;
}

// ---- drawing ------------------------------------------------------------------------------------------

function element(name, attributes, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
}

function handleRadius(obj) {
  // 4 screen pixels whatever the zoom, but at most an eighth of the object's smaller side (at least 1.5 screen
  // pixels), so that the handles of a 30 px person do not hide it
  const unit = screenScale();
  if (!obj) return 4 * unit;
  const xs = obj.polygon.map((p) => p[0]), ys = obj.polygon.map((p) => p[1]);
  const side = Math.min(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
  return Math.max(1.5 * unit, Math.min(4 * unit, side / 8));
}

function polygonPoints(polygon) { return polygon.map((p) => p.join(",")).join(" "); }

function visibleProposals() {
  return state.proposals.map((p, k) => [p, k]).filter(([p]) => p.score >= state.scoreMin);
}

function render() {
  const svg = $("overlay");
  svg.replaceChildren();
  for (const obj of state.objects) {
    if (obj.hidden) continue;
    const color = classColor(obj.class);
    element("polygon", {
      points: polygonPoints(obj.polygon), fill: color, stroke: color,
      class: "object" + (obj.id === state.selected ? " selected" : "") + (obj.excluded ? " excluded" : ""),
      "data-id": obj.id, "pointer-events": "none",
    }, svg);
  }
  for (const [proposal, k] of visibleProposals()) {
    const lit = k === state.proposal || k === state.hoverProposal;
    element("polygon", { points: polygonPoints(proposal.polygon), class: "proposal" + (lit ? " highlight" : ""),
                         "data-proposal": k, "pointer-events": "none" }, svg);
  }
  const selected = state.objects.find((o) => o.id === state.selected);
  if (selected && !selected.hidden) {
    const r = handleRadius(selected);
    const polygon = selected.polygon;
    if (!state.brush) {
      polygon.forEach((a, k) => {
        const b = polygon[(k + 1) % polygon.length];
        // Ctrl+click on an edge inserts a vertex; a plain click passes through (it may be a new object's point)
        const edge = element("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: "edge" }, svg);
        edge.addEventListener("mousedown", (event) => { if (event.ctrlKey) insertVertex(event, selected, k); });
      });
      polygon.forEach(([x, y], k) => {
        const vertex = element("circle", { cx: x, cy: y, r, class: "vertex", "data-vertex": k }, svg);
        vertex.addEventListener("mousedown", (event) => startDrag(event, selected, "vertex", k));
      });
      selected.points.forEach(([x, y], k) => {
        const handle = element("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, class: "extreme",
                                         "data-extreme": k }, svg);
        handle.addEventListener("mousedown", (event) => startDrag(event, selected, "extreme", k));
      });
    }
    const clicks = selected.clicks || { positive: [], negative: [] };
    for (const kind of ["positive", "negative"]) {
      for (const [x, y] of clicks[kind] || []) {
        element("circle", { cx: x, cy: y, r: 1.3 * r, class: `correction ${kind}`, "pointer-events": "none" }, svg);
      }
    }
  }
  for (const [x, y] of state.clicks) {
    element("circle", { cx: x, cy: y, r: 1.5 * handleRadius(null), class: "click", "pointer-events": "none" }, svg);
  }
  if (state.stroke) {
    element("polyline", { points: polygonPoints(state.stroke.path), class: `stroke ${state.stroke.mode}`,
                          "stroke-width": 2 * state.brushRadius, "pointer-events": "none" }, svg);
  }
  renderLists();
  setStatus();
  // the first-run hint: until this session has its first object
  if (state.objects.length) state.hasObjects = true;
  $("hint").hidden = !(state.frame && !state.hasObjects && !state.clicks.length);
}

function objectLabel(obj) {
  const track = obj.track_id ? ` #${obj.track_id}` : "";
  const flags = ATTRIBUTES.filter((a) => obj.attributes && obj.attributes[a]).map((a) => a[0]).join("");   // o t c
  return `${obj.class}${track}${flags ? ` [${flags}]` : ""}${obj.excluded ? " (excluded)" : ""} ` +
    `(${obj.polygon.length} v)`;
}

function renderLists() {
  const list = $("object-list");
  list.replaceChildren();
  for (const obj of state.objects) {
    const item = document.createElement("li");
    item.dataset.id = obj.id;
    item.className = (obj.id === state.selected ? "selected " : "") + (obj.hidden ? "hidden-object" : "");
    item.innerHTML = `<span class="swatch"></span><span class="name"></span>` +
      `<button data-action="hide" title="Hide (H)">${obj.hidden ? "show" : "hide"}</button>` +
      `<button data-action="delete" title="Delete (Del)">✕</button>`;
    item.querySelector(".swatch").style.background = classColor(obj.class);
    item.querySelector(".name").textContent = objectLabel(obj);
    item.querySelector(".name").title = "#track id; [o] occluded, [t] truncated, [c] crowd; (n v): polygon vertices";
    item.addEventListener("click", (event) => {
      const action = event.target.dataset.action;
      if (action === "hide") toggleHidden(obj.id);
      else if (action === "delete") deleteObject(obj.id);
      else select(obj.id);
    });
    list.appendChild(item);
  }
  $("object-count").textContent = state.objects.length ? `(${state.objects.length})` : "";
  const selected = state.objects.find((o) => o.id === state.selected);
  $("object-editor").hidden = !selected;
  if (selected) {
    $("object-class").value = selected.class;
    $("tolerance").value = selected.tolerance;
    const iou = selected.polygon_iou === undefined || selected.polygon_iou === null ? ""
      : `, polygon IoU ${selected.polygon_iou.toFixed(3)}`;
    const clicks = selected.clicks || { positive: [], negative: [] };
    const corrections = (clicks.positive || []).length + (clicks.negative || []).length;
    $("polygon-stats").textContent = `${selected.polygon.length} vertices${iou}, tolerance ${selected.tolerance} px` +
      (selected.track_id ? `, track ${selected.track_id}` : "") +
      (corrections ? `, ${corrections} correction click${corrections > 1 ? "s" : ""}` : "") +
      (state.explicit ? "" : " · keys 1–9 set the class of NEW objects; select it (list, Tab) to relabel it");
    const offered = offeredAttributes(selected.class);
    for (const name of ATTRIBUTES) {
      const box = $(`attribute-${name}`);
      box.parentElement.hidden = !offered.includes(name);
      box.checked = !!(selected.attributes && selected.attributes[name]);
    }
    $("excluded").checked = !!selected.excluded;
  }
  const proposals = $("proposal-list");
  proposals.replaceChildren();
  for (const [proposal, k] of visibleProposals()) {
    const item = document.createElement("li");
    item.dataset.proposal = k;
    item.className = k === state.proposal ? "selected" : "";
    item.innerHTML = `<span class="swatch"></span><span class="name"></span>` +
      `<button data-action="accept">accept</button><button data-action="reject">reject</button>`;
    item.querySelector(".swatch").style.background = classColor(proposal.class);
    item.querySelector(".name").textContent = `${proposal.class} ${proposal.score.toFixed(2)}`;
    item.addEventListener("click", (event) => {
      if (event.target.dataset.action === "accept") acceptProposal(k);
      else if (event.target.dataset.action === "reject") rejectProposal(k);
      else chooseProposal(k);
    });
    item.addEventListener("mouseenter", () => { state.hoverProposal = k; highlightProposals(); });
    item.addEventListener("mouseleave", () => {
      if (state.hoverProposal === k) { state.hoverProposal = null; highlightProposals(); }
    });
    proposals.appendChild(item);
  }
  const shown = visibleProposals().length;
  $("proposal-count").textContent = state.proposals.length ? `(${shown} of ${state.proposals.length})` : "";
  $("proposal-note").textContent = state.suppressed
    ? `${state.suppressed} more left out: they overlap labelled objects` : "";
  $("proposal-tools").hidden = !state.proposals.length && !state.suppressed;
}

function highlightProposals() {   // hovering an entry lights its outline without drawing everything again
  for (const outline of document.querySelectorAll("#overlay polygon.proposal")) {
    const k = Number(outline.dataset.proposal);
    outline.classList.toggle("highlight", k === state.proposal || k === state.hoverProposal);
  }
}

async function drawTracks() {
  let tracks;
  try { tracks = (await api("GET", "/api/tracks", undefined, LIMITS.background)).tracks; } catch (error) { return; }
  const list = $("track-list");
  list.replaceChildren();
  for (const track of tracks) {
    const item = document.createElement("li");
    item.dataset.track = track.track_id;
    item.innerHTML = `<span class="swatch"></span><span class="name"></span>`;
    item.querySelector(".swatch").style.background = classColor(track.class);
    item.querySelector(".name").textContent = `#${track.track_id} ${track.class}: frames ${track.ranges}`;
    item.addEventListener("click", () => showTrack(track));
    list.appendChild(item);
  }
  $("track-count").textContent = tracks.length ? `(${tracks.length})` : "";
}

async function showTrack(track) {
  const frame = track.frames.find((k) => k > state.index) ?? track.frames[0];
  if (frame !== state.index) await goTo(frame);
  if (state.index !== frame) return;   // its frame could not be shown
  const obj = state.objects.find((o) => o.track_id === track.track_id);
  if (obj) select(obj.id);
}

// ---- actions ------------------------------------------------------------------------------------------

function select(id) {
  state.selected = id;
  state.explicit = id !== null;
  render();
}

function updateObject(id, change) {
  return commit(state.objects.map((o) => (o.id === id ? { ...o, ...change } : o)));
}

// an outline changed by hand (vertex drag/insert/delete, brush/eraser, correction click, moved extreme point):
// "edited" tells copying (C) to keep this object instead of segmenting it again, and to carry its polygon to the next
// frame; a copied object stops being "propagated" ("brush" after a stroke, "clicks" after any other hand edit)
function handEdit(obj, change) {
  const source = change.source || (obj.source === "propagated" ? "clicks" : obj.source);
  return { ...obj, ...change, edited: true, source };
}

function updateByHand(id, change) {
  return commit(state.objects.map((o) => (o.id === id ? handEdit(o, change) : o)));
}

function deleteObject(id) {
  if (state.selected === id) state.selected = null;
  return commit(state.objects.filter((o) => o.id !== id));
}

function toggleHidden(id) {
  const obj = state.objects.find((o) => o.id === id);
  if (obj) updateObject(id, { hidden: !obj.hidden });
}

async function segment(points, tolerance, clicks) {
  busy(1);
  const started = performance.now();
  try {
    const body = { frame: state.index, points, tolerance };
    if (clicks && (clicks.positive.length || clicks.negative.length)) Object.assign(body, clicks);
    const result = await api("POST", "/api/segment", body, LIMITS.segment);
    window.studioTimings.push({ what: "segment", ms: performance.now() - started });
    return result;
  } finally { busy(-1); }
}

function emptyClicks() { return { positive: [], negative: [] }; }

async function addClick(raw, event) {
  if (!state.frame) return;
  // the overlay covers exactly the image: a click on its last pixel column may round to the width; keep it inside
  const point = insideFrame(raw);
  const now = performance.now();
  const near = (a, b) => {
    const distance = Math.hypot(a[0] - b[0], a[1] - b[1]);
    return distance < DISTINCT_PX || distance <= SAME_POINT_PX * screenScale();
  };
  const last = state.lastClick;
  state.lastClick = { point, time: now };
  if (last && now - last.time < DOUBLE_CLICK_MS && near(point, last.point)) return;   // the 2nd click of a double-click
  const twin = state.clicks.findIndex((c) => near(point, c));
  if (twin >= 0) {
    showMessage(`this point is the same as click ${twin + 1}: an object needs four different extreme points ` +
                `(${4 - state.clicks.length} more to click)`, "warning");
    return;
  }
  if (!state.clicks.length) { state.selected = null; showMessage(""); }   // a new object: the selected one steps aside
  state.clicks.push(point);
  render();
  if (state.clicks.length < 4) return;
  const points = state.clicks;
  const index = state.index;
  const clicked = performance.now();
  try {
    const result = await segment(points, 1.0);
    if (state.index !== index) return;
    const attributes = Object.fromEntries(offeredAttributes(state.newClass).map((a) => [a, false]));
    const obj = { id: result.id, class: state.newClass, points: result.points, polygon: result.polygon,
                  tolerance: 1.0, score: result.score, polygon_iou: result.polygon_iou, hidden: false,
                  source: "clicks", track_id: state.nextTrack++, attributes, excluded: false, edited: false,
                  carried: false, clicks: emptyClicks() };
    state.clicks = [];
    state.selected = obj.id;   // selected for correction clicks and handles; NOT for relabelling by key
    state.explicit = false;
    const saved = commit([...state.objects, obj]);   // draws the polygon at once, then saves
    window.studioTimings.push({ what: "polygon", ms: performance.now() - clicked, server_ms: result.milliseconds });
    await saved;
  } catch (error) {
    if (error instanceof ApiError) state.clicks = [];   // the points cannot make an object: start again
    else state.clicks.pop();   // the server did not answer: the first three clicks are kept, the 4th is clicked again
    render();
    if (error instanceof ApiError) showMessage(error.message);
    else {
      showMessage(`the studio server does not answer (${error.message}): the first three points are kept; click ` +
                  "the 4th again once it answers", "error", true);
    }
  }
}

const NOT_APPLIED = {   // what a re-segmentation the server did not answer leaves undone, and how to redo it
  resegment: "the moved point was not applied; move it again", correction: "the correction click was not " +
    "applied; click again", tolerance: "the new tolerance was not applied; set it again",
};

async function resegment(obj, points, tolerance, clicks, what = "resegment", byHand = true) {
  const started = performance.now();
  const index = state.index;
  try {
    const result = await segment(points, tolerance, clicks);
    if (state.index !== index) return;   // an answer for a frame no longer shown (the operator moved on)
    const change = { points: result.points, polygon: result.polygon, tolerance, score: result.score,
                     polygon_iou: result.polygon_iou, carried: false };   // segmented from its points again
    if (clicks) change.clicks = clicks;
    const saved = (byHand ? updateByHand : updateObject)(obj.id, change);
    window.studioTimings.push({ what, ms: performance.now() - started, server_ms: result.milliseconds });
    await saved;
  } catch (error) { showError(error, NOT_APPLIED[what]); render(); }
}

async function correctionClick(raw, kind) {
  const obj = state.objects.find((o) => o.id === state.selected);
  if (!obj) {
    showMessage("a correction click needs a selected object: make one with four clicks, or select one (list, Tab, " +
                "Ctrl+click)", "warning");
    return;
  }
  const clicks = clone(obj.clicks || emptyClicks());
  const point = insideFrame(raw);
  clicks[kind].push(point);
  showMessage("");
  await resegment(obj, obj.points, obj.tolerance, clicks, "correction");
  const after = state.objects.find((o) => o.id === obj.id);
  if (!after || !after.clicks || after.clicks[kind].length !== clicks[kind].length) return;   // refused
  const inside = pointInPolygon(point, after.polygon);
  // a click whose pixel ends on the side it asked for did its job, even when the outline did not have to move
  if (inside !== (kind === "positive")) {
    showMessage(`the ${kind} click had no effect on the outline there (the model kept that pixel ` +
                `${inside ? "inside" : "outside"}): try a click nearer the wrong part, or the brush (B / X)`, "warning");
  }
}

function insertVertex(event, obj, k) {
  event.stopPropagation();
  const polygon = obj.polygon.map((p) => [...p]);
  const point = nearestOnSegment(imagePoint(event), polygon[k], polygon[(k + 1) % polygon.length]);
  polygon.splice(k + 1, 0, point);
  updateByHand(obj.id, { polygon, polygon_iou: undefined });
}

function startDrag(event, obj, kind, k) {
  if (event.button !== 0 || event.shiftKey) return;   // Shift+click on a handle is a correction click
  event.stopPropagation();
  event.preventDefault();
  if (kind === "vertex" && event.altKey) {
    if (obj.polygon.length > 3) {
      updateByHand(obj.id, { polygon: obj.polygon.filter((_, j) => j !== k), polygon_iou: undefined });
    }
    return;
  }
  // the handle keeps its offset to the pointer: grabbing it off-centre does not make it jump
  const origin = kind === "vertex" ? obj.polygon[k] : obj.points[k];
  state.drag = { id: obj.id, kind, k, moved: false, grab: imagePoint(event), origin: [...origin] };
}

function onMouseMove(event) {
  if (state.stroke) {
    const point = insideFrame(imagePoint(event)), last = state.stroke.path[state.stroke.path.length - 1];
    if (point[0] !== last[0] || point[1] !== last[1]) { state.stroke.path.push(point); render(); }
    return;
  }
  const drag = state.drag;
  if (!drag) return;
  const obj = state.objects.find((o) => o.id === drag.id);
  if (!obj) return;
  const [mx, my] = imagePoint(event);
  const point = insideFrame([drag.origin[0] + mx - drag.grab[0], drag.origin[1] + my - drag.grab[1]]);
  if (!drag.moved && point[0] === drag.origin[0] && point[1] === drag.origin[1]) return;
  if (!drag.moved) { drag.before = clone(state.objects); drag.moved = true; }
  if (drag.kind === "vertex") obj.polygon[drag.k] = point;
  else obj.points[drag.k] = point;
  render();
}

async function onMouseUp(event) {
  if (state.stroke) { await finishStroke(event); return; }
  onMouseMove(event);   // the release point is the final position, whatever moves were reported before it
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (!drag.moved) { addClick(drag.grab); return; }   // a click on a handle, not a drag: a new object's point
  const obj = state.objects.find((o) => o.id === drag.id);
  const edited = clone(state.objects);
  state.objects = drag.before;   // the undo entry starts from the state before the drag
  if (drag.kind === "vertex") {
    await commit(edited.map((o) => (o.id === obj.id ? handEdit(o, { polygon_iou: undefined }) : o)));
  } else {
    await resegment(obj, obj.points, obj.tolerance, obj.clicks);
  }
}

function onStageMouseDown(event) {
  if (event.button !== 0 || !state.frame) return;
  prefetchWhenIdle();
  const point = imagePoint(event);
  if (state.brush) { startStroke(event, point); return; }
  if (event.ctrlKey || event.metaKey) {   // select the topmost object under the pointer
    const hit = [...state.objects].reverse().find((o) => !o.hidden && pointInPolygon(point, o.polygon));
    select(hit ? hit.id : null);
    return;
  }
  if (event.shiftKey) { event.preventDefault(); correctionClick(point, "positive"); return; }   // (no text selection)
  if (event.altKey) { event.preventDefault(); correctionClick(point, "negative"); return; }
  addClick(point, event);
}

// ---- brush and eraser ---------------------------------------------------------------------------------

function setBrush(mode) {
  state.brush = state.brush === mode ? null : mode;
  if (state.brush && !state.objects.find((o) => o.id === state.selected)) {
    state.brush = null;
    showMessage("the brush and the eraser work on the selected object: select one first", "warning");
  }
  $("overlay").classList.toggle("brushing", !!state.brush);
  render();
}

function startStroke(event, point) {
  event.preventDefault();
  state.stroke = { mode: event.altKey || state.brush === "eraser" ? "erase" : "paint", path: [point] };
  render();
}

async function finishStroke() {
  const stroke = state.stroke;
  state.stroke = null;
  const obj = state.objects.find((o) => o.id === state.selected);
  if (!obj) { render(); return; }
  const started = performance.now();
  const index = state.index;
  busy(1);
  try {
    const result = await api("POST", `/api/frames/${index}/brush`, {
      polygon: obj.polygon, strokes: [{ mode: stroke.mode, radius: state.brushRadius, points: stroke.path }],
      tolerance: obj.tolerance }, LIMITS.brush);
    window.studioTimings.push({ what: "brush", ms: performance.now() - started });
    if (state.index !== index) return;   // an answer for a frame no longer shown
    updateByHand(obj.id, { polygon: result.polygon, polygon_iou: result.polygon_iou, source: "brush" });   // saved in turn
  } catch (error) { showError(error, "the stroke was not applied; draw it again"); render(); }
  finally { busy(-1); }
}

// ---- copy to the next frame, proposals, export -----------------------------------------------------------

async function copyPrevious() {
  if (state.index === 0) return;
  busy(1);
  try {
    const index = state.index, source = state.index - 1;
    const result = await api("POST", `/api/frames/${index}/propagate`, { source, objects: state.objects },
                             LIMITS.propagate);
    if (result.failures.length) {
      showMessage(`${result.failures.length} object(s) not copied: ` + result.failures.map((f) => f.reason).join("; "));
    }
    // the frame's objects with the copied ones merged in by the server: an object of a track the frame already
    // has UPDATES that track's object (which keeps its id, attributes, flags) unless the operator edited that one
    // by hand (kept as it is); the others are added
    if (state.index !== index) return;
    const kept = result.kept && result.kept.length ? `, ${result.kept.length} kept (edited by hand)` : "";
    if (canonical(result.objects) === canonical(state.objects)) {
      if (result.objects.length) {
        showMessage(`C: nothing changed – frame ${index + 1} already has the objects of frame ${source + 1} ` +
                    `(same tracks, same outlines${kept})`, "warning");
      }
      return;
    }
    commit(result.objects);   // saved in turn (not awaited: a server that is away must not keep the page busy)
    if (!result.failures.length) {
      showMessage(`copied from frame ${source + 1}: ${result.added.length} added, ${result.updated.length} ` +
                  `updated (same track)${kept}`, "info");
    }
  } catch (error) { showError(error, "C copied nothing; press C again"); } finally { busy(-1); }
}

async function loadProposals() {
  busy(1);
  const index = state.index;
  try {
    const result = await api("POST", `/api/frames/${index}/proposals`, { objects: state.objects }, LIMITS.proposals);
    if (state.index !== index) return;   // proposals for a frame no longer shown
    state.proposals = result.proposals;
    state.suppressed = result.suppressed || 0;
    state.proposal = null;
    render();
    if (!result.proposals.length) {
      showMessage("the streaming model proposes nothing new here" +
                  (state.suppressed ? ` (${state.suppressed} overlap labelled objects)` : ""), "info");
    } else {
      showMessage("choose a proposal (click it in the list, or ↓ / ↑), then Enter accepts it; R rejects it", "info");
    }
  } catch (error) { showError(error, "P showed nothing; press P again"); } finally { busy(-1); }
}

function chooseProposal(k) { state.proposal = k; render(); }

function stepProposal(step) {
  const shown = visibleProposals().map(([, k]) => k);
  if (!shown.length) return false;
  const at = shown.indexOf(state.proposal);
  chooseProposal(shown[at < 0 ? (step > 0 ? 0 : shown.length - 1) : (at + step + shown.length) % shown.length]);
  return true;
}

function acceptProposal(k) {
  const proposal = state.proposals[k];
  if (!proposal) return;
  state.proposals.splice(k, 1);
  state.proposal = null;
  state.hoverProposal = null;
  const obj = { id: "p" + Math.random().toString(16).slice(2, 12), class: proposal.class, points: proposal.points,
                polygon: proposal.polygon, tolerance: 1.0, score: proposal.score,
                polygon_iou: proposal.polygon_iou, hidden: false, source: "proposal", track_id: state.nextTrack++,
                attributes: Object.fromEntries(offeredAttributes(proposal.class).map((a) => [a, false])),
                excluded: false, edited: false, carried: false, clicks: emptyClicks() };
  state.selected = obj.id;
  state.explicit = false;
  showMessage(`accepted: ${proposal.class} ${proposal.score.toFixed(2)}`, "info");
  commit([...state.objects, obj]);
}

function acceptChosen() {
  if (state.proposal === null || !state.proposals[state.proposal] ||
      state.proposals[state.proposal].score < state.scoreMin) {
    if (state.proposals.length) {
      showMessage("Enter accepts the CHOSEN proposal: click one in the list or press ↓ / ↑ first", "warning");
    }
    return;
  }
  acceptProposal(state.proposal);
}

function rejectProposal(k) {
  if (k === null || !state.proposals[k]) return;
  state.proposals.splice(k, 1);
  state.proposal = null;
  state.hoverProposal = null;
  render();
}

let exporting = null;   // the running export: {started}

async function exportSession() {
  // no time limit: a big session takes long and the server finishes the export whatever the page does. While it
  // runs, the page asks the server whether it answers at all (GET /api/info within LIMITS.alive, every
  // LIMITS.aliveEvery) and says so when it does not; the export's answer is still awaited and shown when it comes.
  // One export at a time from this page (the server would run a second one after the first, for nothing)
  if (exporting) {
    showMessage(`an export is running (since ${Math.round((performance.now() - exporting.started) / 1000)} s); ` +
                "its result shows here when the server answers", "warning");
    return;
  }
  exporting = { started: performance.now() };
  busy(1);
  const alive = watchExport(exporting);
  try {
    const result = await api("POST", "/api/export", { overwrite: true });
    showMessage(`exported ${result.objects} objects on ${result.frames} frames to ${result.out}`, "info");
  } catch (error) { showError(error, "the export may not have been written; press E again"); } finally {
    exporting.done = true;
    exporting = null;
    alive.stop();
    busy(-1);
  }
}

function watchExport(run) {   // while `run` lasts: a connection message when the server stops answering
  let timer = null, silent = false;
  const check = async () => {
    try {
      await api("GET", "/api/info", undefined, LIMITS.alive);
      silent = false;   // (serverAnswered took the message away)
    } catch (error) {
      if (!run.done && !silent && error instanceof ConnectionError) {
        silent = true;
        showMessage(`export: the studio server does not answer (${error.message}); the export is still awaited, ` +
                    "its result shows here if the server answers again", "error", true);
      }
    }
    if (!run.done) timer = setTimeout(check, LIMITS.aliveEvery);
  };
  timer = setTimeout(check, LIMITS.aliveEvery);
  return { stop: () => clearTimeout(timer) };
}

// ---- keys -----------------------------------------------------------------------------------------------

function stageCentre() {
  const box = $("stage").getBoundingClientRect();
  return [box.left + box.width / 2, box.top + box.height / 2];
}

function nextLabelled() {
  const after = [...state.labelled].sort((a, b) => a - b).find((k) => k > state.index);
  if (after !== undefined) goTo(after);
}

function cycleSelection() {
  if (!state.objects.length) return;
  const k = state.objects.findIndex((o) => o.id === state.selected);
  select(state.objects[(k + 1) % state.objects.length].id);
}

function relabel(id, name) {
  const obj = state.objects.find((o) => o.id === id);
  if (!obj || obj.class === name) return;
  const offered = offeredAttributes(name);
  const attributes = Object.fromEntries(offered.map((a) => [a, !!(obj.attributes && obj.attributes[a])]));
  showMessage(`object ${state.objects.indexOf(obj) + 1}: ${obj.class} → ${name} (Ctrl+Z undoes)`, "info");
  updateObject(id, { class: name, attributes });
}

function classKeyName() { return `instseg-studio class ${state.info.bag} ${state.info.topic}`; }

function setNewClass(name) {
  state.newClass = name;
  $("class-select").value = name;
  try { window.localStorage.setItem(classKeyName(), name); } catch (error) { /* storage off: not remembered */ }
}

function classKey(name) {
  if (state.selected && state.explicit) { relabel(state.selected, name); return; }
  setNewClass(name);
  showMessage(`new objects: ${name}`, "info");
}

function onKey(event) {
  const target = event.target;
  const key = event.key;
  if (target.tagName === "SELECT") {
    // a dropdown keeps ↑/↓ for itself; ←/→ and the other keys are the page's (it no longer changes the class)
    if (key === "ArrowUp" || key === "ArrowDown" || key === "Enter" || key === " ") return;
    target.blur();
  } else if (target.tagName === "INPUT" && target.type !== "range" && target.type !== "checkbox") return;
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (key === "z" || key === "Z")) { event.preventDefault(); (event.shiftKey ? redo : undo)(); return; }
  if (ctrl && key === "y") { event.preventDefault(); redo(); return; }
  if (ctrl || event.altKey) return;
  const proposalsShown = visibleProposals().length > 0;
  const actions = {
    ArrowRight: () => goTo(state.index + 1), d: () => goTo(state.index + 1),
    ArrowLeft: () => goTo(state.index - 1), a: () => goTo(state.index - 1),
    ArrowDown: () => proposalsShown && stepProposal(1), ArrowUp: () => proposalsShown && stepProposal(-1),
    PageDown: () => goTo(state.index + 10), PageUp: () => goTo(state.index - 10),
    Home: () => goTo(0), End: () => goTo(state.timestamps.length - 1), n: nextLabelled,
    Backspace: () => { state.clicks.pop(); render(); },
    Escape: () => {
      state.clicks = []; state.selected = null; state.explicit = false; state.brush = null; state.proposal = null;
      state.proposals = []; state.suppressed = 0;   // P shows them again
      $("help").hidden = true; render();
    },
    Tab: cycleSelection, Delete: () => state.selected && deleteObject(state.selected),
    h: () => state.selected && toggleHidden(state.selected), c: copyPrevious, p: loadProposals,
    Enter: acceptChosen, r: () => rejectProposal(state.proposal), e: exportSession,
    b: () => setBrush("brush"), x: () => setBrush("eraser"),
    "[": () => { state.brushRadius = Math.max(1, state.brushRadius - 1); setStatus(); },
    "]": () => { state.brushRadius = Math.min(100, state.brushRadius + 1); setStatus(); },
    "?": () => { $("help").hidden = !$("help").hidden; },
    "+": () => zoomAt(1.25, ...stageCentre()), "=": () => zoomAt(1.25, ...stageCentre()),
    "-": () => zoomAt(0.8, ...stageCentre()), "0": resetView,
  };
  const action = actions[key] || actions[key.toLowerCase()];
  if (action) { event.preventDefault(); action(); return; }
  if (/^[1-9]$/.test(key) && state.info.classes[Number(key) - 1]) classKey(state.info.classes[Number(key) - 1]);
}

// ---- zoom and pan (the viewport is scaled by CSS; getScreenCTM keeps clicks in image pixels) -------------

function applyView() {
  const { zoom, x, y } = state.view;
  $("viewport").style.transform = `translate(${x}px, ${y}px) scale(${zoom})`;
  render();
}

function zoomAt(factor, clientX, clientY) {
  const view = state.view;
  const zoom = Math.max(1, Math.min(16, view.zoom * factor));
  const box = $("stage").getBoundingClientRect();
  // keep the point under the pointer where it is: the viewport's transform origin is the stage's centre
  const cx = clientX - box.left - box.width / 2, cy = clientY - box.top - box.height / 2;
  view.x = cx - ((cx - view.x) * zoom) / view.zoom;
  view.y = cy - ((cy - view.y) * zoom) / view.zoom;
  view.zoom = zoom;
  if (zoom === 1) { view.x = 0; view.y = 0; }
  applyView();
}

function resetView() { state.view = { zoom: 1, x: 0, y: 0 }; applyView(); }

function onWheel(event) {
  event.preventDefault();
  zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX, event.clientY);
}

function onPanStart(event) {
  if (event.button !== 1 && event.button !== 2) return;   // middle or right button drags the view
  event.preventDefault();
  state.pan = { x: event.clientX - state.view.x, y: event.clientY - state.view.y, startX: event.clientX,
                startY: event.clientY, button: event.button, point: state.frame ? imagePoint(event) : null };
}

function onPanMove(event) {
  if (!state.pan) return;
  state.view.x = event.clientX - state.pan.x;
  state.view.y = event.clientY - state.pan.y;
  $("viewport").style.transform = `translate(${state.view.x}px, ${state.view.y}px) scale(${state.view.zoom})`;
}

function onPanEnd(event) {
  const pan = state.pan;
  state.pan = null;
  // a right click that did not move the view is a negative correction click
  if (pan.button === 2 && pan.point && Math.hypot(event.clientX - pan.startX, event.clientY - pan.startY) < 3 &&
      $("overlay").contains(event.target)) {
    correctionClick(pan.point, "negative");
  }
}

// ---- start --------------------------------------------------------------------------------------------

async function start() {
  try {
    state.info = await api("GET", "/api/info", undefined, LIMITS.background);
    const timeline = await api("GET", "/api/timeline", undefined, LIMITS.background);
    state.timestamps = timeline.timestamps_ns;
    state.labelled = new Set(timeline.labelled);
    state.version = timeline.version;
    state.nextTrack = state.info.next_track_id || 1;
    state.hasObjects = state.info.objects > 0;
  } catch (error) {
    showMessage(`the studio cannot start: ${error.message}`);
    return;
  }
  if (state.info.segmenter === "service" && LIMITS.segment < 12000) LIMITS.segment = 12000;   // its own limit: 10 s
  $("bag-name").textContent = `${state.info.bag} ${state.info.topic} · ${state.info.segmenter}`;
  for (const id of ["class-select", "object-class"]) {
    for (const name of state.info.classes) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $(id).appendChild(option);
    }
  }
  const remembered = window.localStorage.getItem(classKeyName());   // the last class chosen for this bag and topic
  setNewClass(state.info.classes.includes(remembered) ? remembered : state.info.classes[0]);
  // a dropdown gives the keys back once a class is chosen: ←/→ then move frames, not the class
  $("class-select").addEventListener("change", (event) => { setNewClass(event.target.value); event.target.blur(); });
  $("object-class").addEventListener("change", (event) => {
    if (state.selected) relabel(state.selected, event.target.value);
    event.target.blur();
  });
  $("tolerance").addEventListener("change", (event) => {
    const obj = state.objects.find((o) => o.id === state.selected);
    if (obj) resegment(obj, obj.points, Number(event.target.value), obj.clicks, "tolerance", false);
    event.target.blur();
  });
  for (const name of ATTRIBUTES) {
    $(`attribute-${name}`).addEventListener("change", (event) => {
      const obj = state.objects.find((o) => o.id === state.selected);
      if (obj) updateObject(obj.id, { attributes: { ...(obj.attributes || {}), [name]: event.target.checked } });
      event.target.blur();
    });
  }
  $("excluded").addEventListener("change", (event) => {
    if (state.selected) updateObject(state.selected, { excluded: event.target.checked });
    event.target.blur();
  });
  $("score-min").addEventListener("input", (event) => {
    state.scoreMin = Number(event.target.value);
    $("score-min-value").textContent = state.scoreMin.toFixed(2);
    render();
  });
  $("frame-slider").max = Math.max(0, state.timestamps.length - 1);
  $("frame-slider").addEventListener("input", (event) => goTo(Number(event.target.value)));
  $("prev-button").addEventListener("click", () => goTo(state.index - 1));
  $("next-button").addEventListener("click", () => goTo(state.index + 1));
  $("export-button").addEventListener("click", exportSession);
  $("retry-button").addEventListener("click", retryUnsaved);
  $("reload-button").addEventListener("click", () => window.location.reload());
  window.addEventListener("beforeunload", (event) => { if (state.writes.length) event.preventDefault(); });
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  $("overlay").addEventListener("mousedown", onStageMouseDown);
  $("stage").addEventListener("wheel", onWheel, { passive: false });
  $("stage").addEventListener("mousedown", onPanStart);
  $("stage").addEventListener("contextmenu", (event) => event.preventDefault());
  window.addEventListener("mousemove", (event) => { onPanMove(event); onMouseMove(event); });
  window.addEventListener("mouseup", (event) => { if (state.pan) { onPanEnd(event); return; } onMouseUp(event); });
  window.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { fitImage(); drawTimeline(); render(); });
  drawTimeline();
  await goTo(0);
  drawTracks();
  document.body.dataset.ready = "true";
}

start();
