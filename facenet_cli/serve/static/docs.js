// /docs: the API from /openapi.json, drawn with no script or style from anywhere but this server
// (FastAPI's own /docs loads Swagger UI from a CDN, and is blank offline).
"use strict";

function element(tag, text, className) {
  const el = document.createElement(tag);
  if (text) el.textContent = text;
  if (className) el.className = className;
  return el;
}

function bodyFields(op, spec) {
  const content = (op.requestBody && op.requestBody.content) || {};
  const schema = Object.values(content)[0] && Object.values(content)[0].schema;
  if (!schema) return [];
  const ref = schema.$ref ? spec.components.schemas[schema.$ref.split("/").pop()] : schema;
  return Object.entries((ref && ref.properties) || {}).map(([name, p]) =>
    `${name} (form field${(ref.required || []).includes(name) ? ", required" : ""})${p.description ? ": " + p.description : ""}`);
}

async function show() {
  const root = document.getElementById("operations");
  try {
    const spec = await (await fetch("openapi.json")).json();
    root.textContent = "";
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const box = element("div", null, "op");
        const head = element("div");
        head.append(element("span", method.toUpperCase(), "method"), element("code", path));
        box.appendChild(head);
        if (op.summary) box.appendChild(element("div", op.summary));
        if (op.description) box.appendChild(element("div", op.description, "params"));
        const params = (op.parameters || []).map((p) =>
          `${p.name} (${p.in}${p.required ? ", required" : ""})${p.description ? ": " + p.description : ""}`);
        const list = element("ul", null, "params");
        for (const line of params.concat(bodyFields(op, spec))) list.appendChild(element("li", line));
        if (list.children.length) box.appendChild(list);
        root.appendChild(box);
      }
    }
  } catch (error) {
    root.textContent = `Could not read /openapi.json: ${error.message}`;
  }
}

show();
