// The page of `facenet serve`, live part: stream the camera as JPEG frames over a WebSocket (each
// camera frame once), draw the server's boxes and names (never older than their answer allows),
// enrol a face by clicking it. gallery.js: dialogs, photos, the gallery list and its map.
// State is kept in window.facenet so that scripts (and the browser tests) can read what is drawn.
"use strict";

// Frames sent but not answered. Two: the server starts the next frame as it answers one, while
// the page grabs and encodes the one after (one at a time left the server idle for that time and
// waiting for the next camera frame: 15 fps against 21 with a small face, benchmarks/serve_small_face.py).
// The server keeps only the newest waiting frame, so answers never fall behind.
const MAX_IN_FLIGHT = 2;
const STUCK_MS = 2000;         // resend when no answer came for this long
const JPEG_QUALITY = 0.8;
// Boxes belong to one answer: gone after BOX_TTL_MS (or two answer intervals on a slow server),
// so an old box never sits over a new scene, a stalled server or a closed socket.
const BOX_TTL_MS = 300, BOX_TTL_MAX_MS = 1000;
const NO_FACE_HINT_MS = 1500;  // frames without a face for this long: say why and what to do
const FPS_WINDOW_MS = 2000;
const GALLERY_POLL_MS = 2000;
// Distinct colours (Tableau 10, then more), handed out in order: two people never share one.
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
                 "#9c755f", "#bab0ac", "#86bcb6", "#d37295", "#8cd17d", "#f1ce63", "#a0cbe8", "#ffbe7d"];
const UNKNOWN_COLOUR = "#ffffff", UNSURE_COLOUR = "#888888";

const $ = (id) => document.getElementById(id);
const video = $("video"), overlay = $("overlay"), statusLine = $("status"), facesList = $("faces-in-view");
const grab = document.createElement("canvas");
// The server's proof that a change comes from its own page (another site's form cannot send it).
const CSRF = document.querySelector('meta[name="facenet-csrf"]').content;

const state = window.facenet = {
  connected: false, answers: 0, sent: 0, lastAnswered: 0, lastSentAt: 0,
  sentAt: new Map(), last: null, overlay: [], overlayAt: 0, enrol: null, galleryVersion: -1,
  gallery: null, map: null, latencies: [], error: null, cameraError: null, fps: 0,
  sentFrames: [], answeredAt: [], noFaceSince: null, colours: new Map(), mapFit: null, mapPixels: {},
  threshold: null, dialogs: 0,
};

function colourOf(name) {
  if (!name || name === "unknown") return UNKNOWN_COLOUR;
  if (!state.colours.has(name)) {
    const n = state.colours.size;
    // Past the palette: golden-angle hues, far apart from their neighbours.
    state.colours.set(name, n < PALETTE.length ? PALETTE[n] : `hsl(${Math.round(n * 137.508) % 360}, 70%, 62%)`);
  }
  return state.colours.get(name);
}

function shownName(face) {
  return face.name === "unknown" ? `unknown #${face.track}` : face.name;
}

// How sure: the share of strangers the gallery would name less readily (1 - the answer's FAR).
function sureText(face) {
  if (face.name === "unknown" || face.far === null || face.far === undefined) return "";
  return `${(100 * (1 - face.far)).toFixed(face.far < 0.001 ? 2 : 1)} % sure`;
}

// ------------------------------------------------------------------ socket

let socket = null;

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onopen = () => { state.connected = true; state.sent = 0; state.lastAnswered = 0; state.sentAt.clear(); };
  socket.onclose = (event) => {
    state.connected = false;
    clearOverlay();  // nothing is being recognised now
    setEnrolling(false);
    statusLine.textContent = `disconnected (${event.code}${event.reason ? ": " + event.reason : ""}); reconnecting…`;
    setTimeout(connect, 1500);
  };
  socket.onmessage = (event) => onMessage(JSON.parse(event.data));
}

function onMessage(msg) {
  if (msg.type === "hello") {
    statusLine.textContent = `model ${msg.model} · people in the gallery: ${msg.people}`;
  } else if (msg.type === "faces") {
    onFaces(msg);
  } else if (msg.type === "enrol") {
    showEnrol(msg);
  } else if (msg.type === "error") {
    state.error = msg.message;
    const el = $("enrol-status");
    el.textContent = msg.message;
    el.className = "error";
    setEnrolling(false);
  }
}

function onFaces(msg) {
  const now = performance.now();
  state.answers += 1;
  state.lastAnswered = msg.frame_id;
  state.threshold = msg.threshold;
  const sentAt = state.sentAt.get(msg.frame_id);
  for (const id of state.sentAt.keys()) if (id <= msg.frame_id) state.sentAt.delete(id);
  if (sentAt !== undefined) {
    state.latencies.push(now - sentAt);
    if (state.latencies.length > 30) state.latencies.shift();
  }
  // Every answer is for a camera frame of its own (see sendFrame): frames per second are answers per second.
  state.answeredAt.push(now);
  while (state.answeredAt.length && now - state.answeredAt[0] > FPS_WINDOW_MS) state.answeredAt.shift();
  const span = state.answeredAt.length > 1 ? now - state.answeredAt[0] : 0;
  state.fps = span > 0 ? (state.answeredAt.length - 1) * 1000 / span : 0;
  state.last = msg;
  draw(msg);
  showHint(msg, now);
  if (msg.enrol) showEnrol(msg.enrol);
  const sorted = [...state.latencies].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  statusLine.textContent = `${state.fps.toFixed(1)} fps (new camera frames answered) · ${median.toFixed(0)} ms from ` +
    `frame to names (server ${msg.process_ms.toFixed(0)} ms) · people in the gallery: ${msg.people}`;
  if (msg.gallery_version !== state.galleryVersion) {
    state.galleryVersion = msg.gallery_version;
    refreshGallery();
  } else {
    drawMap();
  }
  sendFrame();
}

// ------------------------------------------------------------------ frames: each camera frame once

let cameraFrame = 0;      // camera frames seen (requestVideoFrameCallback), or video times
let lastSentFrame = -1;

function watchFrames() {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (_now, meta) => {
      cameraFrame = meta.presentedFrames;
      sendFrame();
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    setInterval(() => { cameraFrame = video.currentTime; sendFrame(); }, 30);
  }
}

function sendFrame() {
  if (!socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2 || !video.videoWidth) return;
  if (cameraFrame === lastSentFrame) return;  // this camera frame went out already
  const inFlight = state.sent - state.lastAnswered;
  const now = performance.now();
  if (inFlight >= MAX_IN_FLIGHT && now - state.lastSentAt < STUCK_MS) return;
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  lastSentFrame = cameraFrame;
  state.sentFrames.push(cameraFrame);
  if (state.sentFrames.length > 300) state.sentFrames.shift();
  state.lastSentAt = now;
  state.sent += 1;
  const id = state.sent;
  state.sentAt.set(id, now);  // from the grab: the JPEG encoding counts in the latency
  grab.toBlob((blob) => {
    if (!blob || socket.readyState !== WebSocket.OPEN) return;
    socket.send(blob);
  }, "image/jpeg", JPEG_QUALITY);
}

// ------------------------------------------------------------------ drawing

function clearOverlay() {
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  state.overlay = [];
  facesList.textContent = "";
  $("sure-legend").hidden = true;
}

function explainSureness() {
  const legend = $("sure-legend");
  legend.hidden = !state.threshold || !state.overlay.length;
  legend.textContent = `Bar: how close a face is to its nearest person; a name needs it past the tick ` +
    `(score ${state.threshold ? state.threshold.toFixed(3) : "?"} or less). % sure: the share of strangers ` +
    "this gallery would not name as readily.";
}

function boxTtl() {
  const times = state.answeredAt;
  if (times.length < 3) return BOX_TTL_MS;
  const interval = (times[times.length - 1] - times[0]) / (times.length - 1);
  return Math.min(BOX_TTL_MAX_MS, Math.max(BOX_TTL_MS, 2 * interval));
}

function expireBoxes() {
  if (state.overlay.length && performance.now() - state.overlayAt > boxTtl()) clearOverlay();
  requestAnimationFrame(expireBoxes);
}

// Where the video's picture is on the canvas (object-fit: contain leaves bars on a wide stage).
function videoRect(msg) {
  const w = overlay.width, h = overlay.height;
  const scale = Math.min(w / msg.width, h / msg.height);
  return { scale, x0: (w - msg.width * scale) / 2, y0: (h - msg.height * scale) / 2 };
}

function draw(msg) {
  const rect = overlay.getBoundingClientRect();
  overlay.width = rect.width;
  overlay.height = rect.height;
  clearOverlay();
  const ctx = overlay.getContext("2d");
  const { scale, x0, y0 } = videoRect(msg);
  state.overlayAt = performance.now();
  for (const face of msg.faces) {
    const [l, t, r, b] = face.box;
    const label = face.stable ? face.label : "…";
    const colour = face.stable ? colourOf(face.name) : UNSURE_COLOUR;
    const x = x0 + l * scale, y = y0 + t * scale;
    ctx.strokeStyle = colour;
    ctx.lineWidth = 3;
    ctx.setLineDash(face.stable ? [] : [6, 4]);
    ctx.strokeRect(x, y, (r - l) * scale, (b - t) * scale);
    ctx.setLineDash([]);
    const text = face.stable ? `${shownName(face)} ${sureText(face)}`.trim() : "…";
    ctx.font = "bold 15px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8;
    const lx = Math.max(0, Math.min(x, overlay.width - w));  // the whole label on the canvas
    ctx.fillStyle = colour;
    ctx.fillRect(lx, Math.max(0, y - 21), w, 21);
    ctx.fillStyle = "#000";
    ctx.fillText(text, lx + 4, Math.max(15, y - 5));
    const drawn = { label, name: face.name, stable: face.stable, box: face.box, track: face.track, text,
                    centre: [(l + r) / 2, (t + b) / 2], labelBox: [lx, Math.max(0, y - 21), lx + w, Math.max(21, y)] };
    state.overlay.push(drawn);
    facesList.appendChild(faceItem(face, drawn));
  }
  explainSureness();
}

function bar(face) {
  // How close the face is to its person: full at distance 0, the white tick at the threshold
  // (a name past it, to the right), empty at twice the threshold.
  const el = document.createElement("span");
  el.className = "bar";
  if (face.score === null || face.score === undefined || !state.threshold) return el;
  const full = 2 * state.threshold;
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(0, 100 * (1 - face.score / full))}%`;
  fill.style.background = face.score <= state.threshold ? "#59a14f" : "#e15759";
  const tick = document.createElement("i");
  tick.style.left = "50%";
  el.append(fill, tick);
  el.title = `score ${face.score.toFixed(3)}; named at ${state.threshold.toFixed(3)} or less`;
  return el;
}

function faceItem(face, drawn) {
  const li = document.createElement("li");
  li.dataset.label = drawn.label;
  li.dataset.track = String(face.track);
  li.dataset.centreX = String(drawn.centre[0]);
  const button = document.createElement("button");
  button.type = "button";
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = face.stable ? colourOf(face.name) : UNSURE_COLOUR;
  const text = document.createElement("span");
  text.textContent = face.stable ? `${shownName(face)} ${sureText(face)}`.trim() : `face #${face.track}: looking…`;
  button.append(swatch, text, bar(face));
  button.title = "Name this face";
  button.onclick = () => nameFace(face.track);
  li.appendChild(button);
  return li;
}

function showHint(msg, now) {
  const hint = $("hint");
  let text = null;
  if (!msg.faces.length) {
    state.noFaceSince = state.noFaceSince ?? now;
    if (now - state.noFaceSince >= NO_FACE_HINT_MS) {
      text = `No face found. Faces narrower than about ${msg.smallest_face_px} px (of this ${msg.width} px ` +
             "frame) are not found: come closer to the camera and face it, with light on your face (or start the " +
             "server with a larger --detect-width).";
    }
  } else {
    state.noFaceSince = null;
    if (msg.faces.some((f) => !f.clear)) text = "A face is small or blurred: come closer and hold still to get a name.";
  }
  hint.hidden = text === null;
  hint.textContent = text || "";
}

// Click a face (its box or its label) to name it.
overlay.addEventListener("click", (event) => {
  if (!state.last) return;
  const rect = overlay.getBoundingClientRect();
  const px = (event.clientX - rect.left) * overlay.width / rect.width;
  const py = (event.clientY - rect.top) * overlay.height / rect.height;
  const { scale, x0, y0 } = videoRect(state.last);
  const hit = state.overlay.find((f) => {
    const [l, t, r, b] = f.box;
    const inBox = px >= x0 + l * scale && px <= x0 + r * scale && py >= y0 + t * scale && py <= y0 + b * scale;
    const [ll, lt, lr, lb] = f.labelBox;
    return inBox || (px >= ll && px <= lr && py >= lt && py <= lb);
  });
  if (hit) nameFace(hit.track);
});

// ------------------------------------------------------------------ naming a face

async function nameFace(track) {
  const face = state.last && state.last.faces.find((f) => f.track === track);
  const now = face ? shownName(face) : `face #${track}`;
  const answer = await ask({ text: `Who is ${now}? Its next clear frames are enrolled under this name.`,
                             value: face && face.name !== "unknown" ? face.name : "", ok: "Enrol" });
  if (answer) startEnrolling(answer.value, track);
}

// ------------------------------------------------------------------ enrolment

function setEnrolling(on) {
  $("enrol-cancel").hidden = !on;
  $("enrol-button").disabled = on;
}

function startEnrolling(name, track = null) {
  if (!name || !socket || socket.readyState !== WebSocket.OPEN) return;
  state.error = null;
  const command = { type: "enrol", name };
  if (track !== null) command.track = track;
  socket.send(JSON.stringify(command));
  setEnrolling(true);
}

$("enrol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const faces = state.last ? state.last.faces : [];
  // One face in view: that one; several: the server waits for one alone (clicking picks one).
  startEnrolling($("enrol-name").value.trim(), faces.length === 1 ? faces[0].track : null);
});

$("enrol-cancel").addEventListener("click", () => {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "cancel" }));
});

function showEnrol(status) {
  state.enrol = status;
  const el = $("enrol-status");
  el.className = "";
  if (!status.name) { el.textContent = "Cancelled."; setEnrolling(false); return; }
  const whose = status.track ? ` (face #${status.track})` : "";
  const skipped = Object.entries(status.skipped || {}).map(([why, n]) => `${n} ${why}`).join(", ");
  if (status.done) {
    el.textContent = `${status.name}: ${status.added} face${status.added === 1 ? "" : "s"} enrolled` +
      (status.stopped ? ` — ${status.stopped}` : "") + (skipped ? ` (frames skipped: ${skipped})` : "");
    setEnrolling(false);
  } else {
    el.textContent = `Enrolling ${status.name}${whose}: ${status.added}/${status.wanted}` +
      (skipped ? ` (skipped: ${skipped})` : " (look at the camera)");
    setEnrolling(true);
  }
}
// ------------------------------------------------------------------ start

function cameraProblem(error) {
  const name = error && error.name;
  if (!navigator.mediaDevices) {
    return "The browser gives the camera only to https:// pages and to http://localhost or 127.0.0.1: open " +
           "the page that way (or put the server behind https).";
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "The camera is blocked for this page: allow it (the camera icon in the address bar, or the site's " +
           "settings), then reload.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return "No camera found: plug one in (or close the program using it), then reload.";
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return "The camera is in use by another program or tab: close it, then reload.";
  }
  return `The camera could not start (${error && error.message}); reload to try again.`;
}

async function start() {
  expireBoxes();
  try {
    if (!navigator.mediaDevices) throw new Error("no mediaDevices");
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    watchFrames();
  } catch (error) {
    state.cameraError = (error && error.name) || "unavailable";
    state.error = `camera: ${error && error.message}`;
    const notice = $("notice");
    // Its own element: the live status line never overwrites it.
    notice.textContent = `${cameraProblem(error)} Meanwhile you can identify or compare photos (Photos), ` +
                         "and edit the gallery.";
    notice.hidden = false;
  }
  connect();
  refreshGallery();
  // Frames go out as answers come back and as camera frames arrive; this timer restarts the loop.
  setInterval(sendFrame, 100);
  setInterval(pollGallery, GALLERY_POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);  // once gallery.js is loaded too
