// The page of `facenet serve`: stream the camera as JPEG frames over a WebSocket, draw the
// server's boxes and names, enrol people, list the gallery and draw its 2-D map.
// State is kept in window.facenet so that scripts (and the browser test) can read what is drawn.
"use strict";

const MAX_IN_FLIGHT = 1;       // frames sent but not answered; the server keeps only the newest
const STUCK_MS = 2000;         // resend when no answer came for this long
const JPEG_QUALITY = 0.8;

const video = document.getElementById("video");
const overlay = document.getElementById("overlay");
const statusLine = document.getElementById("status");
const facesList = document.getElementById("faces-in-view");
const grab = document.createElement("canvas");
// The server's proof that a change comes from its own page (another site's form cannot send it).
const CSRF = document.querySelector('meta[name="facenet-csrf"]').content;

const state = window.facenet = {
  connected: false, answers: 0, sent: 0, lastAnswered: 0, lastSentAt: 0,
  sentAt: new Map(), last: null, overlay: [], enrol: null, galleryVersion: -1,
  gallery: null, map: null, latencies: [], error: null,
};

function colourOf(name) {
  if (!name || name === "unknown") return "#ff9f1c";
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 80%, 60%)`;
}

// ------------------------------------------------------------------ socket

let socket = null;

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onopen = () => { state.connected = true; state.sent = 0; state.lastAnswered = 0; state.sentAt.clear(); };
  socket.onclose = (event) => {
    state.connected = false;
    statusLine.textContent = `disconnected (${event.code}${event.reason ? ": " + event.reason : ""}); reconnecting…`;
    setTimeout(connect, 1500);
  };
  socket.onmessage = (event) => onMessage(JSON.parse(event.data));
}

function onMessage(msg) {
  if (msg.type === "hello") {
    statusLine.textContent = `model ${msg.model}, ${msg.people} people`;
  } else if (msg.type === "faces") {
    onFaces(msg);
  } else if (msg.type === "enrol") {
    showEnrol(msg);
  } else if (msg.type === "error") {
    state.error = msg.message;
    const el = document.getElementById("enrol-status");
    el.textContent = msg.message;
    el.className = "error";
  }
}

function onFaces(msg) {
  const now = performance.now();
  state.answers += 1;
  state.lastAnswered = msg.frame_id;
  const sentAt = state.sentAt.get(msg.frame_id);
  for (const id of state.sentAt.keys()) if (id <= msg.frame_id) state.sentAt.delete(id);
  if (sentAt !== undefined) {
    state.latencies.push(now - sentAt);
    if (state.latencies.length > 30) state.latencies.shift();
  }
  state.last = msg;
  draw(msg);
  if (msg.enrol) showEnrol(msg.enrol);
  const sorted = [...state.latencies].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  statusLine.textContent = `${msg.fps.toFixed(1)} fps · ${median.toFixed(0)} ms from frame to names ` +
    `(server ${msg.process_ms.toFixed(0)} ms) · ${msg.people} people · ${msg.dropped} stale frames dropped`;
  if (msg.gallery_version !== state.galleryVersion) {
    state.galleryVersion = msg.gallery_version;
    refreshGallery();
  } else {
    drawMap();
  }
  sendFrame();
}

function sendFrame() {
  if (!socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2 || !video.videoWidth) return;
  const inFlight = state.sent - state.lastAnswered;
  const now = performance.now();
  if (inFlight >= MAX_IN_FLIGHT && now - state.lastSentAt < STUCK_MS) return;
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  state.lastSentAt = now;
  state.sent += 1;
  const id = state.sent;
  grab.toBlob((blob) => {
    if (!blob || socket.readyState !== WebSocket.OPEN) return;
    state.sentAt.set(id, performance.now());
    socket.send(blob);
  }, "image/jpeg", JPEG_QUALITY);
}

// ------------------------------------------------------------------ drawing

function draw(msg) {
  const rect = overlay.getBoundingClientRect();
  overlay.width = rect.width;
  overlay.height = rect.height;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const sx = overlay.width / msg.width, sy = overlay.height / msg.height;
  state.overlay = [];
  facesList.textContent = "";
  for (const face of msg.faces) {
    const [l, t, r, b] = face.box;
    const label = face.stable ? face.label : "…";
    const colour = face.stable ? colourOf(face.name) : "#999";
    ctx.strokeStyle = colour;
    ctx.lineWidth = 3;
    ctx.setLineDash(face.stable ? [] : [6, 4]);
    ctx.strokeRect(l * sx, t * sy, (r - l) * sx, (b - t) * sy);
    ctx.setLineDash([]);
    const text = face.stable && face.distance !== null && face.name !== "unknown"
      ? `${label} (${face.distance.toFixed(3)})` : label;
    ctx.font = "bold 16px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8;
    ctx.fillStyle = colour;
    ctx.fillRect(l * sx, Math.max(0, t * sy - 22), w, 22);
    ctx.fillStyle = "#000";
    ctx.fillText(text, l * sx + 4, Math.max(16, t * sy - 6));
    const drawn = { label, name: face.name, stable: face.stable, box: face.box, track: face.track,
                    centre: [(l + r) / 2, (t + b) / 2] };
    state.overlay.push(drawn);
    const li = document.createElement("li");
    li.textContent = `${label} at ${face.box.join(",")}`;
    li.dataset.label = label;
    li.dataset.centreX = String(drawn.centre[0]);
    facesList.appendChild(li);
  }
}

// ------------------------------------------------------------------ enrolment

document.getElementById("enrol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = document.getElementById("enrol-name").value.trim();
  if (!name || !socket || socket.readyState !== WebSocket.OPEN) return;
  state.error = null;
  socket.send(JSON.stringify({ type: "enrol", name }));
});

function showEnrol(status) {
  state.enrol = status;
  const el = document.getElementById("enrol-status");
  el.className = "";
  if (!status.name) { el.textContent = ""; return; }
  el.textContent = status.done
    ? `${status.name}: ${status.added} faces enrolled`
    : `Enrolling ${status.name}: ${status.added}/${status.wanted} (look at the camera, alone)`;
}

// ------------------------------------------------------------------ gallery and map

async function api(path, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  if (method !== "GET" && method !== "HEAD") {
    options = { ...options, headers: { ...(options.headers || {}), "X-Facenet-CSRF": CSRF } };
  }
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

async function refreshGallery() {
  try {
    const [gallery, map] = await Promise.all([api("api/gallery"), api("api/map")]);
    state.gallery = gallery;
    state.map = map;
    renderGallery(gallery);
    drawMap();
  } catch (error) {
    state.error = String(error);
  }
}

function thumb(url, name) {
  if (url) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = name;
    return img;
  }
  const span = document.createElement("span");
  span.className = "initial";
  span.textContent = name.slice(0, 1).toUpperCase();
  return span;
}

function renderGallery(gallery) {
  const list = document.getElementById("people");
  list.textContent = "";
  document.getElementById("gallery-count").textContent =
    `(${gallery.people.length} people, ${gallery.faces.length} faces)`;
  for (const person of gallery.people) {
    const li = document.createElement("li");
    li.dataset.person = person.name;
    li.appendChild(thumb(person.thumbnail, person.name));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `${person.name} (${person.faces})`;
    name.style.color = colourOf(person.name);
    li.appendChild(name);
    const remove = document.createElement("button");
    remove.textContent = "Remove";
    remove.title = `Remove ${person.name} and all their faces`;
    remove.onclick = async () => {
      if (!confirm(`Remove ${person.name} and their ${person.faces} faces?`)) return;
      await api(`api/gallery/people/${encodeURIComponent(person.name)}`, { method: "DELETE" });
      refreshGallery();
    };
    li.appendChild(remove);
    list.appendChild(li);
    const faces = document.createElement("div");
    faces.className = "faces";
    for (const face of gallery.faces.filter((f) => f.person === person.name)) {
      const t = thumb(face.thumbnail, person.name);
      t.title = `face ${face.id}: click to move it to another person or remove it`;
      t.onclick = () => editFace(face);
      faces.appendChild(t);
    }
    list.appendChild(faces);
  }
}

async function editFace(face) {
  const answer = prompt(`Face ${face.id} of ${face.person}: type another name to move it there, ` +
                        `or "-" to remove it.`, face.person);
  if (answer === null || answer.trim() === face.person) return;
  try {
    if (answer.trim() === "-") {
      await api(`api/gallery/faces/${face.id}`, { method: "DELETE" });
    } else {
      const form = new FormData();
      form.append("name", answer.trim());
      await api(`api/gallery/faces/${face.id}/move`, { method: "POST", body: form });
    }
  } catch (error) {
    alert(error.message);
  }
  refreshGallery();
}

function drawMap() {
  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = state.map ? state.map.points : [];
  const inView = state.last ? state.last.faces.filter((f) => f.map) : [];
  const all = points.map((p) => [p.x, p.y]).concat(inView.map((f) => f.map));
  if (!all.length) return;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const pad = 16;
  const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
  const scale = Math.min((canvas.width - 2 * pad) / ((maxX - minX) || 1), (canvas.height - 2 * pad) / ((maxY - minY) || 1));
  const at = (p) => [pad + (p[0] - minX) * scale, canvas.height - pad - (p[1] - minY) * scale];
  for (const p of points) {
    const [x, y] = at([p.x, p.y]);
    ctx.fillStyle = colourOf(p.person);
    ctx.beginPath();
    ctx.arc(x, y, 4, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.lineWidth = 2;
  for (const f of inView) {
    const [x, y] = at(f.map);
    ctx.strokeStyle = f.stable ? colourOf(f.name) : "#999";
    ctx.beginPath();
    ctx.moveTo(x - 7, y - 7); ctx.lineTo(x + 7, y + 7);
    ctx.moveTo(x + 7, y - 7); ctx.lineTo(x - 7, y + 7);
    ctx.stroke();
  }
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    video.srcObject = stream;
  } catch (error) {
    state.error = `camera: ${error.message}`;
    statusLine.textContent = `No camera (${error.message}); the gallery and the HTTP API still work.`;
  }
  connect();
  refreshGallery();
  // Frames go out as answers come back; this timer restarts the loop (first frame, reconnects).
  setInterval(sendFrame, 100);
}

start();
