// The page's panels besides the live view: in-page dialogs, the photo upload (identify one photo,
// compare two), the gallery list (rename, remove, move faces) and the map of the gallery.
// Loaded after app.js, whose state (window.facenet), colours and helpers it uses.
"use strict";

// ------------------------------------------------------------------ in-page dialogs (recognition goes on)

function ask({ text, value = null, ok = "OK", extra = null }) {
  const dialog = $("dialog"), input = $("dialog-name");
  $("dialog-text").textContent = text;
  const withName = value !== null;
  input.hidden = $("dialog-label").hidden = !withName;
  input.value = withName ? value : "";
  $("dialog-ok").textContent = ok;
  $("dialog-extra").hidden = !extra;
  $("dialog-extra").textContent = extra || "";
  state.dialogs += 1;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("dialog-form").onsubmit = null;
      $("dialog-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("dialog-form").onsubmit = (event) => {
      event.preventDefault();
      const action = event.submitter ? event.submitter.value : "ok";
      if (action === "ok" && withName && !input.value.trim()) { input.focus(); return; }
      done({ action, value: input.value.trim() });
    };
    $("dialog-cancel").onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    (withName ? input : $("dialog-ok")).focus();
  });
}

// ------------------------------------------------------------------ HTTP API

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

function form(fields) {
  const data = new FormData();
  for (const [key, value] of Object.entries(fields)) data.append(key, value);
  return data;
}

// ------------------------------------------------------------------ photos (no camera needed)

$("photo-file").addEventListener("change", async () => {
  const file = $("photo-file").files[0];
  const out = $("photo-result");
  if (!file) return;
  out.className = "";
  out.textContent = "Looking…";
  try {
    const answer = await api("api/identify", { method: "POST", body: form({ image: file }) });
    state.photo = answer;
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const canvas = $("photo-canvas");
    const scale = canvas.width / bitmap.width;
    canvas.height = Math.round(bitmap.height * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const names = [];
    answer.faces.forEach((face, i) => {
      const [l, t, r, b] = face.box.map((v) => v * scale * bitmap.width / answer.width);
      ctx.strokeStyle = colourOf(face.name);
      ctx.lineWidth = 2;
      ctx.strokeRect(l, t, r - l, b - t);
      ctx.fillStyle = colourOf(face.name);
      ctx.font = "bold 13px system-ui, sans-serif";
      const text = face.name === "unknown" ? `unknown #${i + 1}` : face.name;
      ctx.fillText(text, l, Math.max(12, t - 3));
      names.push(`${text}${face.name === "unknown" ? "" : " " + sureText(face)}`);
    });
    out.textContent = answer.faces.length ? names.join(" · ") : "No face found in this photo.";
  } catch (error) {
    out.className = "error";
    out.textContent = error.message;
  }
});

$("compare-button").addEventListener("click", async () => {
  const first = $("compare-first").files[0], second = $("compare-second").files[0];
  const out = $("compare-result");
  out.className = "";
  if (!first || !second) { out.textContent = "Choose two photos first."; return; }
  try {
    const answer = await api("api/compare", { method: "POST", body: form({ first, second }) });
    state.compare = answer;
    out.textContent = `${answer.same_person ? "The same person" : "Two different people"}: distance ` +
      `${answer.squared_l2.toFixed(3)} (the same person at ${answer.threshold.toFixed(3)} or less).`;
  } catch (error) {
    out.className = "error";
    out.textContent = error.message;
  }
});

// ------------------------------------------------------------------ gallery

async function refreshGallery() {
  try {
    const [gallery, map] = await Promise.all([api("api/gallery"), api("api/map")]);
    state.gallery = gallery;
    state.map = map;
    for (const person of gallery.people) colourOf(person.name);  // colours in the order people appear
    renderGallery(gallery);
    drawMap();
  } catch (error) {
    state.error = String(error);
  }
}

// Answers to frames say when the gallery changed; without a camera (or while it sends nothing) ask.
async function pollGallery() {
  if (state.last && performance.now() - state.answeredAt[state.answeredAt.length - 1] < GALLERY_POLL_MS) return;
  try {
    const map = await api("api/map");
    if (map.gallery_version !== state.galleryVersion) {
      state.galleryVersion = map.gallery_version;
      refreshGallery();
    }
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

function button(text, title, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.title = title;
  b.onclick = onclick;
  return b;
}

async function change(fn) {
  try {
    await fn();
  } catch (error) {
    await ask({ text: error.message });
  }
  refreshGallery();
}

function renderGallery(gallery) {
  const list = $("people");
  list.textContent = "";
  const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  $("gallery-count").textContent = `(${count(gallery.people.length, "person", "people")}, ` +
    `${count(gallery.faces.length, "face", "faces")})`;
  for (const person of gallery.people) {
    const li = document.createElement("li");
    li.dataset.person = person.name;
    li.appendChild(thumb(person.thumbnail, person.name));
    const name = document.createElement("span");
    name.className = "name";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(person.name);
    name.append(swatch, `${person.name} (${person.faces})`);
    li.appendChild(name);
    li.appendChild(button("Rename", `Rename ${person.name} (or merge into another person)`, async () => {
      const answer = await ask({ text: `New name for ${person.name} (an existing person's name merges the two):`,
                                 value: person.name, ok: "Rename" });
      if (!answer || answer.value === person.name) return;
      await change(async () => {
        const moved = await api(`api/gallery/people/${encodeURIComponent(person.name)}/rename`,
                                { method: "POST", body: form({ new_name: answer.value }) });
        if (!state.colours.has(moved.to)) state.colours.set(moved.to, colourOf(person.name));
      });
    }));
    li.appendChild(button("Remove", `Remove ${person.name} and all their faces`, async () => {
      const answer = await ask({ text: `Remove ${person.name} and their ${person.faces} faces?`, ok: "Remove" });
      if (answer) await change(() => api(`api/gallery/people/${encodeURIComponent(person.name)}`, { method: "DELETE" }));
    }));
    list.appendChild(li);
    const faces = document.createElement("div");
    faces.className = "faces";
    for (const face of gallery.faces.filter((f) => f.person === person.name)) {
      const b = button("", `Face ${face.id} of ${person.name}: move it to another person or remove it`,
                       () => editFace(face));
      b.textContent = "";
      b.dataset.face = String(face.id);
      b.appendChild(thumb(face.thumbnail, person.name));
      faces.appendChild(b);
    }
    list.appendChild(faces);
  }
}

async function editFace(face) {
  const answer = await ask({ text: `Face ${face.id} of ${face.person}: whose is it? (To give all of ` +
                                   `${face.person}'s faces another name at once, use Rename.)`, value: face.person,
                             ok: "Move", extra: "Remove this face" });
  if (!answer) return;
  if (answer.action === "extra") {
    await change(() => api(`api/gallery/faces/${face.id}`, { method: "DELETE" }));
  } else if (answer.value !== face.person) {
    await change(() => api(`api/gallery/faces/${face.id}/move`, { method: "POST", body: form({ name: answer.value }) }));
  }
}

// ------------------------------------------------------------------ map: fitted once, a legend and a scale

function fitMap(all, canvas) {
  const pad = 18, xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const fit = state.mapFit;
  if (fit && minX >= fit.minX && maxX <= fit.maxX && minY >= fit.minY && maxY <= fit.maxY) return fit;
  if (fit) {  // a point outside: widen (never turn, never shrink), with room to spare
    [minX, maxX, minY, maxY] = [Math.min(minX, fit.minX), Math.max(maxX, fit.maxX), Math.min(minY, fit.minY),
                                Math.max(maxY, fit.maxY)];
  }
  const spanX = (maxX - minX) || 0.5, spanY = (maxY - minY) || 0.5, margin = 0.15;
  minX -= spanX * margin; maxX += spanX * margin; minY -= spanY * margin; maxY += spanY * margin;
  const scale = Math.min((canvas.width - 2 * pad) / (maxX - minX), (canvas.height - 2 * pad - 16) / (maxY - minY));
  state.mapFit = { minX, maxX, minY, maxY, scale, pad };
  return state.mapFit;
}

function drawMap() {
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = state.map ? state.map.points : [];
  const inView = state.last ? state.last.faces.filter((f) => f.map) : [];
  if (!points.length) state.mapFit = null;  // an empty gallery: the next one is fitted anew
  const all = points.map((p) => [p.x, p.y]).concat(inView.map((f) => f.map));
  renderLegend(points);
  if (!all.length) return;
  const fit = fitMap(all, canvas);
  const at = (p) => [fit.pad + (p[0] - fit.minX) * fit.scale, canvas.height - fit.pad - (p[1] - fit.minY) * fit.scale];
  state.mapPixels = {};
  for (const p of points) {
    const [x, y] = at([p.x, p.y]);
    state.mapPixels[p.face_id] = [x, y];
    ctx.fillStyle = colourOf(p.person);
    ctx.beginPath();
    ctx.arc(x, y, 4, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.lineWidth = 2;
  for (const f of inView) {
    const [x, y] = at(f.map);
    ctx.strokeStyle = f.stable ? colourOf(f.name) : UNSURE_COLOUR;
    ctx.beginPath();
    ctx.moveTo(x - 7, y - 7); ctx.lineTo(x + 7, y + 7);
    ctx.moveTo(x + 7, y - 7); ctx.lineTo(x - 7, y + 7);
    ctx.stroke();
  }
  drawScale(ctx, canvas, fit);
}

function drawScale(ctx, canvas, fit) {
  // A round embedding distance about a quarter of the map wide (the map keeps distances or shortens them).
  const target = canvas.width / 4 / fit.scale;
  const step = [0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5].find((s) => s >= target * 0.6) || target;
  const length = step * fit.scale, x = 8, y = canvas.height - 8;
  ctx.strokeStyle = ctx.fillStyle = "#ccc";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(x, y - 4); ctx.lineTo(x, y); ctx.lineTo(x + length, y); ctx.lineTo(x + length, y - 4);
  ctx.stroke();
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`${step} (embedding distance)`, x + length + 6, y);
  state.mapScale = step;
}

function renderLegend(points) {
  const legend = $("map-legend");
  const people = [...new Set(points.map((p) => p.person))].sort();
  legend.textContent = "";
  for (const name of people) {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(name);
    li.append(swatch, name);
    li.dataset.person = name;
    legend.appendChild(li);
  }
  const li = document.createElement("li");
  li.textContent = "× a face in view";
  legend.appendChild(li);
}
