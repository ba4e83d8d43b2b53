// instseg studio: the page. Plain JavaScript, no build step; the server's JSON API is described in app.py.
// Image coordinates: pixels, x right, y down, pixel centres at integers (the SVG viewBox starts at -0.5).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#ff3b3b", "#ff9f1a", "#2f9bff", "#b45cff", "#19d3c5", "#ffe14d", "#ff5cc8", "#7dff5c",
                 "#ffffff", "#a0a0ff", "#ffb3b3", "#33cccc"];

const state = {
  info: null, timestamps: [], labelled: new Set(), index: 0, frame: null, objects: [], version: 0,
  selected: null, clicks: [], proposals: [], undo: [], redo: [], drag: null, busy: 0, newClass: null,
  view: { zoom: 1, x: 0, y: 0 }, pan: null,
  unsaved: new Map(),   // frame index -> { objects, reason }: changes the server could not save (kept until saved)
};
window.studioState = state;         // for the browser tests and the benchmark
window.studioTimings = [];          // {what, ms}: measured in the page (bench/bench_studio.py reads them)

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || response.statusText);
  return data;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function setStatus() {
  const n = state.timestamps.length;
  const t = n ? (state.timestamps[state.index] / 1e9).toFixed(3) : "";
  $("frame-label").textContent = `frame ${state.index + 1} / ${n}  ·  t = ${t} s`;
  const unsaved = state.unsaved.size;
  $("status").textContent = (state.busy ? "working…  " : "") +
    (unsaved ? `NOT SAVED (${unsaved} frame${unsaved > 1 ? "s" : ""})` : `saved v${state.version}`) +
    (state.clicks.length ? `  ·  click ${state.clicks.length}/4` : "");
  $("status").classList.toggle("unsaved", unsaved > 0);
}

function busy(delta) { state.busy += delta; setStatus(); }

function classColor(name) {
  const k = state.info ? state.info.classes.indexOf(name) : 0;
  return PALETTE[(k < 0 ? 0 : k) % PALETTE.length];
}

function clone(objects) { return JSON.parse(JSON.stringify(objects)); }

// ---- saving, undo, redo -------------------------------------------------------------------------------

let saveQueue = Promise.resolve();

function showUnsaved() {
  const frames = [...state.unsaved.keys()].sort((a, b) => a - b);
  $("unsaved").hidden = !frames.length;
  if (frames.length) {
    const reason = state.unsaved.get(frames[frames.length - 1]).reason;
    $("unsaved-text").textContent = `${reason}. Unsaved changes on frame${frames.length > 1 ? "s" : ""} ` +
      `${frames.map((k) => k + 1).join(", ")} are kept in this page until they are saved.`;
  }
  setStatus();
}

function commit(objects, { record = true, index = state.index } = {}) {
  const before = clone(index === state.index ? state.objects : []);
  const after = clone(objects);
  if (index === state.index) { state.objects = after; render(); }
  saveQueue = saveQueue.then(async () => {
    busy(1);
    try {
      const result = await api("PUT", `/api/frames/${index}/objects`, { base_version: state.version, objects: after });
      state.version = result.version;
      if (after.length) state.labelled.add(index); else state.labelled.delete(index);
      if (record) { state.undo.push({ index, before, after }); state.redo = []; }
      if (state.unsaved.delete(index)) showUnsaved();
      drawTimeline();
    } catch (error) {
      if (error.status === 409) {
        showMessage(error.message);
        if (index === state.index) { state.objects = before; render(); }
      } else {   // not saved (a full or read-only disk, a lost connection): keep the change, drawn, marked unsaved
        const reason = error instanceof ApiError ? error.message : `not saved: ${error.message}`;
        state.unsaved.set(index, { objects: after, reason });
        showUnsaved();
      }
    } finally { busy(-1); }
  });
  return saveQueue;
}

async function retryUnsaved() {
  for (const [index, entry] of [...state.unsaved]) await commit(entry.objects, { record: false, index });
}

async function undoRedo(from, to, pick) {
  const entry = from.pop();
  if (!entry) return;
  if (entry.index !== state.index) await goTo(entry.index);
  await commit(pick(entry), { record: false });
  to.push(entry);
}
const undo = () => undoRedo(state.undo, state.redo, (e) => e.before);
const redo = () => undoRedo(state.redo, state.undo, (e) => e.after);

// ---- frames ---------------------------------------------------------------------------------------------

const prefetch = new Image();

async function goTo(index) {
  const n = state.timestamps.length;
  if (!n) return;
  index = Math.max(0, Math.min(n - 1, index));
  const started = performance.now();
  state.index = index;
  state.clicks = [];
  state.proposals = [];
  state.selected = null;
  $("frame-slider").value = index;
  busy(1);
  try {
    const image = $("frame-image");
    const loaded = new Promise((resolve, reject) => { image.onload = resolve; image.onerror = reject; });
    const [frame] = await Promise.all([api("GET", `/api/frames/${index}`),
                                       (image.src = `/api/frames/${index}/image`, loaded)]);
    if (state.index !== index) return;   // the operator moved on meanwhile
    state.frame = frame;
    // a change the server could not save is shown instead of the saved objects: moving on never loses it
    state.objects = state.unsaved.has(index) ? clone(state.unsaved.get(index).objects) : frame.objects;
    state.version = Math.max(state.version, frame.version);
    const svg = $("overlay");
    svg.setAttribute("viewBox", `-0.5 -0.5 ${frame.width} ${frame.height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    showMessage("");
    render();
    window.studioTimings.push({ what: "frame", ms: performance.now() - started });
    if (index + 1 < n) prefetch.src = `/api/frames/${index + 1}/image`;   // the likely next frame, into the cache
  } catch (error) {
    showMessage(error instanceof ApiError ? error.message : `frame ${index} could not be shown`);
  } finally { busy(-1); }
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

// ---- drawing ------------------------------------------------------------------------------------------

function element(name, attributes, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
}

function handleRadius() {   // 4 screen pixels, in image pixels, whatever the zoom
  const shown = $("overlay").getBoundingClientRect().width;
  return 4 * (state.frame ? state.frame.width / Math.max(1, shown) : 1);
}

function render() {
  const svg = $("overlay");
  svg.replaceChildren();
  const r = handleRadius();
  for (const obj of state.objects) {
    if (obj.hidden) continue;
    const color = classColor(obj.class);
    element("polygon", {
      points: obj.polygon.map((p) => p.join(",")).join(" "), fill: color, stroke: color,
      class: "object" + (obj.id === state.selected ? " selected" : ""), "data-id": obj.id,
      "pointer-events": "none",
    }, svg);
  }
  for (const proposal of state.proposals) {
    element("polygon", { points: proposal.polygon.map((p) => p.join(",")).join(" "), class: "proposal",
                         "pointer-events": "none" }, svg);
  }
  const selected = state.objects.find((o) => o.id === state.selected);
  if (selected && !selected.hidden) {
    const polygon = selected.polygon;
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
  for (const [x, y] of state.clicks) element("circle", { cx: x, cy: y, r: 1.5 * r, class: "click" }, svg);
  renderLists();
  setStatus();
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
    item.querySelector(".name").textContent = `${obj.class} (${obj.polygon.length} v)`;
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
    const iou = selected.polygon_iou === undefined ? "" : `, polygon IoU ${selected.polygon_iou.toFixed(3)}`;
    $("polygon-stats").textContent = `${selected.polygon.length} vertices${iou}, tolerance ${selected.tolerance} px`;
  }
  const proposals = $("proposal-list");
  proposals.replaceChildren();
  state.proposals.forEach((proposal, k) => {
    const item = document.createElement("li");
    item.innerHTML = `<span class="name"></span><button data-action="accept">accept</button>` +
      `<button data-action="reject">reject</button>`;
    item.querySelector(".name").textContent = `${proposal.class} ${proposal.score.toFixed(2)}`;
    item.addEventListener("click", (event) => {
      if (event.target.dataset.action === "accept") acceptProposal(k);
      if (event.target.dataset.action === "reject") rejectProposal(k);
    });
    proposals.appendChild(item);
  });
  $("proposal-count").textContent = state.proposals.length ? `(${state.proposals.length})` : "";
}

// ---- actions ------------------------------------------------------------------------------------------

function select(id) { state.selected = id; render(); }

function updateObject(id, change) {
  return commit(state.objects.map((o) => (o.id === id ? { ...o, ...change } : o)));
}

function deleteObject(id) {
  if (state.selected === id) state.selected = null;
  return commit(state.objects.filter((o) => o.id !== id));
}

function toggleHidden(id) {
  const obj = state.objects.find((o) => o.id === id);
  if (obj) updateObject(id, { hidden: !obj.hidden });
}

async function segment(points, tolerance) {
  busy(1);
  const started = performance.now();
  try {
    const result = await api("POST", "/api/segment", { frame: state.index, points, tolerance });
    window.studioTimings.push({ what: "segment", ms: performance.now() - started });
    return result;
  } finally { busy(-1); }
}

async function addClick([x, y]) {
  if (!state.frame) return;
  // the overlay covers exactly the image: a click on its last pixel column may round to the width; keep it inside
  const point = [Math.max(0, Math.min(state.frame.width - 1, x)), Math.max(0, Math.min(state.frame.height - 1, y))];
  if (!state.clicks.length) state.selected = null;   // a new object: the selected one's handles step aside
  state.clicks.push(point);
  render();
  if (state.clicks.length < 4) return;
  const points = state.clicks;
  const index = state.index;
  const clicked = performance.now();
  try {
    const result = await segment(points, 1.0);
    if (state.index !== index) return;
    const obj = { id: result.id, class: state.newClass, points: result.points, polygon: result.polygon,
                  tolerance: 1.0, score: result.score, polygon_iou: result.polygon_iou, hidden: false,
                  source: "clicks" };
    state.clicks = [];
    state.selected = obj.id;
    const saved = commit([...state.objects, obj]);   // draws the polygon at once, then saves
    window.studioTimings.push({ what: "polygon", ms: performance.now() - clicked, server_ms: result.milliseconds });
    await saved;
  } catch (error) {
    state.clicks = [];
    render();
    showMessage(error.message);
  }
}

async function resegment(obj, points, tolerance) {
  try {
    const result = await segment(points, tolerance);
    await updateObject(obj.id, { points: result.points, polygon: result.polygon, tolerance,
                                 score: result.score, polygon_iou: result.polygon_iou });
  } catch (error) { showMessage(error.message); render(); }
}

function insertVertex(event, obj, k) {
  event.stopPropagation();
  const polygon = obj.polygon.map((p) => [...p]);
  const point = nearestOnSegment(imagePoint(event), polygon[k], polygon[(k + 1) % polygon.length]);
  polygon.splice(k + 1, 0, point);
  updateObject(obj.id, { polygon, polygon_iou: undefined });
}

function startDrag(event, obj, kind, k) {
  event.stopPropagation();
  event.preventDefault();
  if (kind === "vertex" && event.altKey) {
    if (obj.polygon.length > 3) {
      updateObject(obj.id, { polygon: obj.polygon.filter((_, j) => j !== k), polygon_iou: undefined });
    }
    return;
  }
  // the handle keeps its offset to the pointer: grabbing it off-centre does not make it jump
  const origin = kind === "vertex" ? obj.polygon[k] : obj.points[k];
  state.drag = { id: obj.id, kind, k, moved: false, grab: imagePoint(event), origin: [...origin] };
}

function onMouseMove(event) {
  const drag = state.drag;
  if (!drag) return;
  const obj = state.objects.find((o) => o.id === drag.id);
  if (!obj) return;
  const [mx, my] = imagePoint(event);
  const x = drag.origin[0] + mx - drag.grab[0], y = drag.origin[1] + my - drag.grab[1];
  const point = [Math.max(0, Math.min(state.frame.width - 1, x)), Math.max(0, Math.min(state.frame.height - 1, y))];
  if (!drag.moved && point[0] === drag.origin[0] && point[1] === drag.origin[1]) return;
  if (!drag.moved) { drag.before = clone(state.objects); drag.moved = true; }
  if (drag.kind === "vertex") obj.polygon[drag.k] = point;
  else obj.points[drag.k] = point;
  render();
}

async function onMouseUp(event) {
  onMouseMove(event);   // the release point is the final position, whatever moves were reported before it
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (!drag.moved) { addClick(drag.grab); return; }   // a click on a handle, not a drag: a new object's point
  const obj = state.objects.find((o) => o.id === drag.id);
  const edited = clone(state.objects);
  state.objects = drag.before;   // the undo entry starts from the state before the drag
  if (drag.kind === "vertex") {
    await commit(edited.map((o) => (o.id === obj.id ? { ...o, polygon_iou: undefined } : o)));
  } else {
    await resegment(obj, obj.points, obj.tolerance);
  }
}

function onStageMouseDown(event) {
  if (event.button !== 0 || !state.frame || event.ctrlKey) return;
  const point = imagePoint(event);
  if (event.shiftKey) {   // select the topmost object under the pointer
    const hit = [...state.objects].reverse().find((o) => !o.hidden && pointInPolygon(point, o.polygon));
    select(hit ? hit.id : null);
    return;
  }
  addClick(point);
}

async function copyPrevious() {
  if (state.index === 0) return;
  busy(1);
  try {
    const result = await api("POST", `/api/frames/${state.index}/propagate`, { source: state.index - 1 });
    if (result.failures.length) {
      showMessage(`${result.failures.length} object(s) not copied: ` + result.failures.map((f) => f.reason).join("; "));
    }
    if (result.objects.length) await commit([...state.objects, ...result.objects]);
  } catch (error) { showMessage(error.message); } finally { busy(-1); }
}

async function loadProposals() {
  busy(1);
  try {
    const result = await api("POST", `/api/frames/${state.index}/proposals`, {});
    state.proposals = result.proposals;
    render();
    if (!result.proposals.length) showMessage("the streaming model proposes nothing here", "info");
  } catch (error) { showMessage(error.message); } finally { busy(-1); }
}

function acceptProposal(k) {
  const proposal = state.proposals[k];
  if (!proposal) return;
  state.proposals.splice(k, 1);
  const obj = { id: "p" + Math.random().toString(16).slice(2, 12), class: proposal.class, points: proposal.points,
                polygon: proposal.polygon, tolerance: 1.0, score: proposal.score,
                polygon_iou: proposal.polygon_iou, hidden: false, source: "proposal" };
  state.selected = obj.id;
  commit([...state.objects, obj]);
}

function rejectProposal(k) { state.proposals.splice(k, 1); render(); }

async function exportSession() {
  busy(1);
  try {
    const result = await api("POST", "/api/export", { overwrite: true });
    showMessage(`exported ${result.objects} objects on ${result.frames} frames to ${result.out}`, "info");
  } catch (error) { showMessage(error.message); } finally { busy(-1); }
}

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

function setClass(name) {
  state.newClass = name;
  $("class-select").value = name;
  if (state.selected) updateObject(state.selected, { class: name });
}

function onKey(event) {
  if (event.target.tagName === "SELECT" || (event.target.tagName === "INPUT" && event.target.type !== "range")) return;
  const key = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (key === "z" || key === "Z")) { event.preventDefault(); (event.shiftKey ? redo : undo)(); return; }
  if (ctrl && key === "y") { event.preventDefault(); redo(); return; }
  if (ctrl || event.altKey) return;
  const actions = {
    ArrowRight: () => goTo(state.index + 1), d: () => goTo(state.index + 1),
    ArrowLeft: () => goTo(state.index - 1), a: () => goTo(state.index - 1),
    PageDown: () => goTo(state.index + 10), PageUp: () => goTo(state.index - 10),
    Home: () => goTo(0), End: () => goTo(state.timestamps.length - 1), n: nextLabelled,
    Backspace: () => { state.clicks.pop(); render(); },
    Escape: () => { state.clicks = []; state.selected = null; $("help").hidden = true; render(); },
    Tab: cycleSelection, Delete: () => state.selected && deleteObject(state.selected),
    h: () => state.selected && toggleHidden(state.selected), c: copyPrevious, p: loadProposals,
    Enter: () => acceptProposal(0), r: () => rejectProposal(0), e: exportSession,
    "?": () => { $("help").hidden = !$("help").hidden; },
    "+": () => zoomAt(1.25, ...stageCentre()), "=": () => zoomAt(1.25, ...stageCentre()),
    "-": () => zoomAt(0.8, ...stageCentre()), "0": resetView,
  };
  const action = actions[key] || actions[key.toLowerCase()];
  if (action) { event.preventDefault(); action(); return; }
  if (/^[1-9]$/.test(key) && state.info.classes[Number(key) - 1]) setClass(state.info.classes[Number(key) - 1]);
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
  state.pan = { x: event.clientX - state.view.x, y: event.clientY - state.view.y };
}

function onPanMove(event) {
  if (!state.pan) return;
  state.view.x = event.clientX - state.pan.x;
  state.view.y = event.clientY - state.pan.y;
  $("viewport").style.transform = `translate(${state.view.x}px, ${state.view.y}px) scale(${state.view.zoom})`;
}

// ---- start --------------------------------------------------------------------------------------------

async function start() {
  try {
    state.info = await api("GET", "/api/info");
    const timeline = await api("GET", "/api/timeline");
    state.timestamps = timeline.timestamps_ns;
    state.labelled = new Set(timeline.labelled);
    state.version = timeline.version;
  } catch (error) {
    showMessage(`the studio cannot start: ${error.message}`);
    return;
  }
  $("bag-name").textContent = `${state.info.bag} ${state.info.topic} · ${state.info.segmenter}`;
  for (const id of ["class-select", "object-class"]) {
    for (const name of state.info.classes) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $(id).appendChild(option);
    }
  }
  state.newClass = state.info.classes[0];
  $("class-select").addEventListener("change", (event) => { state.newClass = event.target.value; });
  $("object-class").addEventListener("change", (event) => state.selected &&
    updateObject(state.selected, { class: event.target.value }));
  $("tolerance").addEventListener("change", (event) => {
    const obj = state.objects.find((o) => o.id === state.selected);
    if (obj) resegment(obj, obj.points, Number(event.target.value));
  });
  $("frame-slider").max = Math.max(0, state.timestamps.length - 1);
  $("frame-slider").addEventListener("input", (event) => goTo(Number(event.target.value)));
  $("prev-button").addEventListener("click", () => goTo(state.index - 1));
  $("next-button").addEventListener("click", () => goTo(state.index + 1));
  $("export-button").addEventListener("click", exportSession);
  $("retry-button").addEventListener("click", retryUnsaved);
  window.addEventListener("beforeunload", (event) => { if (state.unsaved.size) event.preventDefault(); });
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  $("overlay").addEventListener("mousedown", onStageMouseDown);
  $("stage").addEventListener("wheel", onWheel, { passive: false });
  $("stage").addEventListener("mousedown", onPanStart);
  $("stage").addEventListener("contextmenu", (event) => event.preventDefault());
  window.addEventListener("mousemove", (event) => { onPanMove(event); onMouseMove(event); });
  window.addEventListener("mouseup", (event) => { if (state.pan) { state.pan = null; return; } onMouseUp(event); });
  window.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { drawTimeline(); render(); });
  drawTimeline();
  await goTo(0);
  document.body.dataset.ready = "true";
}

start();
