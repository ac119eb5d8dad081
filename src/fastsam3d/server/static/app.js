// fastsam3d web viewer: NiiVue (shipped in the package, served by the server) + the fastsam3d HTTP API.
// Clicks on a 2D slice are sent in world RAS mm; the label map comes back as raw uint8 voxels in
// NIfTI order and is copied into the overlay volume that was loaded from overlay.nii.gz.
let niivue = null; // the NiiVue module, imported below (a missing install gets a clear message)

const token = new URLSearchParams(location.search).get("token");
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (id) => document.getElementById(id);

const app = {
  nv: null,
  sessionId: null,
  state: null,
  overlay: null,
  busy: Promise.resolve(),
  lastLatencyMs: null,
  overlayVoxels: 0,
  revision: -1,
  errors: [],
  timings: {},
};
window.fastsam3d = app;

// -- API --------------------------------------------------------------------------------------

async function api(method, path, body, raw = false) {
  const init = { method, headers: { ...authHeaders } };
  if (body instanceof Blob) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const data = await response.json();
      detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const text = error instanceof Error ? error.message : String(error);
  app.errors.push(text);
  box.textContent = text;
  box.hidden = false;
}

function setStatus(text) { $("status").textContent = text; }

// serialise every action: clicks arrive faster than predictions on a slow machine
function queue(task) {
  app.busy = app.busy.then(async () => {
    try {
      await task();
    } catch (error) {
      showError(error);
    }
  });
  return app.busy;
}

// -- viewer -----------------------------------------------------------------------------------

function labelColormap(objects) {
  const R = [0], G = [0], B = [0], A = [0], I = [0], labels = [""];
  for (const obj of objects) {
    R.push(obj.color[0]); G.push(obj.color[1]); B.push(obj.color[2]); A.push(255);
    I.push(obj.label); labels.push(obj.name);
  }
  return { R, G, B, A, I, labels };
}

async function loadNiivue() {
  if (niivue) return niivue;
  try {
    niivue = await import("/vendor/niivue.js");
  } catch (error) {
    let detail = String(error);
    try {
      const response = await fetch("/vendor/niivue.js", { method: "GET" });
      if (!response.ok) detail = (await response.json()).detail;
    } catch (_) { /* keep the import error */ }
    throw new Error(`the viewer cannot start: ${detail}`);
  }
  return niivue;
}

async function openViewer() {
  if (app.nv) return app.nv;
  const { Niivue, SLICE_TYPE, SHOW_RENDER } = await loadNiivue();
  const nv = new Niivue({
    backColor: [0.07, 0.07, 0.07, 1],
    show3Dcrosshair: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    isColorbar: false,
    dragAndDropEnabled: false,
  });
  await nv.attachTo("gl");
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  app.nv = nv;
  installPointer(nv);
  return nv;
}

async function loadSession(state) {
  const nv = await openViewer();
  app.sessionId = state.id;
  app.state = state;
  app.revision = -1;
  app.legend = null;
  const base = `/api/sessions/${state.id}`;
  await nv.loadVolumes([
    { url: `${base}/image.nii.gz`, name: "image.nii.gz", headers: authHeaders, colormap: "gray" },
    { url: `${base}/overlay.nii.gz`, name: "labels.nii.gz", headers: authHeaders, opacity: 0.55 },
  ]);
  app.overlay = nv.volumes[1];
  const image = nv.volumes[0];
  if (image.global_min < -500) { // CT: a soft-tissue window
    image.cal_min = -160;
    image.cal_max = 240;
  }
  applyState(state);
  await refreshOverlay(state.revision);
  const select = $("file-select");
  if ([...select.options].some((o) => o.value === state.source)) select.value = state.source;
  setStatus(`${state.source}: ${state.shape.join("x")} voxels, ` +
    `${state.spacing.map((s) => s.toFixed(2)).join("x")} mm, ${state.orientation}`);
}

function applyState(state) {
  app.state = state;
  const legend = JSON.stringify(state.objects.map((o) => [o.label, o.name, o.color]));
  if (app.overlay && legend !== app.legend) { // colours change only with the object list
    app.overlay.setColormapLabel(labelColormap(state.objects));
    app.legend = legend;
    if (state.revision === app.revision) app.nv.updateGLVolume(); // else refreshOverlay draws
  }
  renderObjects(state);
  const active = state.objects.find((o) => o.label === state.active);
  $("undo-btn").disabled = !active || !active.can_undo;
  $("redo-btn").disabled = !active || !active.can_redo;
  $("reset-btn").disabled = !active;
}

// the label map arrives as the box of voxels changed since the revision the page holds (the
// whole grid the first time), uint8 in NIfTI order; the voxel count is kept up to date with it
async function refreshOverlay(revision) {
  if (!app.overlay || revision === app.revision) return;
  const asked = performance.now();
  const full = app.revision < 0;
  const query = full ? "" : `?since=${app.revision}`;
  const response = await api("GET", `/api/sessions/${app.sessionId}/labels${query}`, undefined, true);
  const bytes = new Uint8Array(await response.arrayBuffer());
  app.timings.labels = performance.now() - asked;
  const fetched = performance.now();
  const [I, J, K] = response.headers.get("X-Shape").split(",").map(Number);
  const img = app.overlay.img;
  if (I * J * K !== img.length) {
    throw new Error(`label map has ${I * J * K} voxels, the overlay ${img.length}`);
  }
  const boxText = response.headers.get("X-Box");
  if (boxText) {
    const [i0, i1, j0, j1, k0, k1] = boxText.split(",").map(Number);
    const width = i1 - i0;
    if (bytes.length !== width * (j1 - j0) * (k1 - k0)) {
      throw new Error(`label box ${boxText} does not match its ${bytes.length} bytes`);
    }
    let count = full ? 0 : app.overlayVoxels;
    if (full) img.fill(0);
    let n = 0;
    for (let k = k0; k < k1; k++) {
      for (let j = j0; j < j1; j++) {
        const base = i0 + I * (j + J * k);
        for (let i = 0; i < width; i++, n++) {
          const before = img[base + i];
          const after = bytes[n];
          if (before !== after) {
            if (before === 0) count++;
            else if (after === 0) count--;
            img[base + i] = after;
          }
        }
      }
    }
    app.overlayVoxels = count;
    app.nv.updateGLVolume();
  }
  app.revision = Number(response.headers.get("X-Revision"));
  $("voxels").textContent = `voxels: ${app.overlayVoxels}`;
  app.timings.render = performance.now() - fetched;
}

async function afterChange(state, started) {
  applyState(state);
  await refreshOverlay(state.revision);
  if (started !== undefined) {
    app.lastLatencyMs = performance.now() - started;
    app.timings.total = app.lastLatencyMs;
    const t = app.timings;
    const model = state.click ? `model ${state.click.model_ms.total.toFixed(0)} ms, ` : "";
    $("latency").textContent = `last click: ${t.total.toFixed(0)} ms`;
    $("latency").title = `${model}request ${(t.request ?? 0).toFixed(0)} ms, ` +
      `label map ${(t.labels ?? 0).toFixed(0)} ms, display ${(t.render ?? 0).toFixed(0)} ms`;
  }
  showError(null);
}

// -- objects ----------------------------------------------------------------------------------

function renderObjects(state) {
  const list = $("objects");
  list.replaceChildren();
  for (const obj of state.objects) {
    const item = document.createElement("li");
    item.dataset.label = obj.label;
    item.className = obj.label === state.active ? "active" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${obj.color.join(",")})`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = obj.name;
    name.title = "double-click to rename";
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${obj.voxels} vx`;
    item.append(swatch, name, count);
    item.addEventListener("click", () => queue(() => activate(obj.label)));
    name.addEventListener("dblclick", () => queue(() => rename(obj)));
    list.append(item);
  }
}

async function activate(label) {
  applyState(await api("POST", `/api/sessions/${app.sessionId}/objects/${label}/activate`));
}

async function rename(obj) {
  const name = prompt("Object name", obj.name);
  if (name === null || name.trim() === "" || name === obj.name) return;
  await afterChange(await api("PATCH", `/api/sessions/${app.sessionId}/objects/${obj.label}`, { name }));
}

async function newObject() {
  if (!app.sessionId) return;
  await afterChange(await api("POST", `/api/sessions/${app.sessionId}/objects`, {}));
}

// -- clicks -----------------------------------------------------------------------------------

function canvasPosition(event) {
  const rect = app.nv.canvas.getBoundingClientRect();
  const dpr = app.nv.uiData?.dpr || window.devicePixelRatio || 1;
  return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
}

function installPointer(nv) {
  let down = null;
  nv.canvas.addEventListener("pointerdown", (event) => {
    down = event.button === 0 ? { x: event.clientX, y: event.clientY } : null;
  });
  nv.canvas.addEventListener("pointerup", (event) => {
    if (!down || event.button !== 0 || !app.sessionId) return;
    const moved = Math.hypot(event.clientX - down.x, event.clientY - down.y);
    down = null;
    if (moved > 4) return; // a drag, not a click
    const frac = nv.canvasPos2frac(canvasPosition(event));
    if (!frac || frac[0] < 0) return; // not on a 2D slice (e.g. the 3D render)
    const mm = nv.frac2mm(frac);
    const positive = !(event.shiftKey || event.altKey);
    const started = performance.now();
    queue(() => sendClick([mm[0], mm[1], mm[2]], positive, started));
  });
}

async function sendClick(mm, positive, started) {
  const asked = performance.now();
  const state = await api("POST", `/api/sessions/${app.sessionId}/clicks`, {
    point: mm, positive, frame: "ras",
  });
  app.timings = {
    queued: asked - started,
    request: performance.now() - asked,
    server: state.click.server_ms,
    model: state.click.model_ms.total,
  };
  await afterChange(state, started);
}

// a test / script hook: move the crosshair to world mm, return the CSS pixel of that point in a
// 2D tile (then a real mouse click there is a click on that voxel)
app.pagePointFor = (mm) => {
  const nv = app.nv;
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
  const pos = nv.frac2canvasPos(nv.mm2frac(mm));
  if (!pos) return null;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData?.dpr || window.devicePixelRatio || 1;
  return { x: rect.left + pos[0] / dpr, y: rect.top + pos[1] / dpr };
};

async function history(action) {
  if (!app.sessionId) return;
  const started = performance.now();
  const state = await api("POST", `/api/sessions/${app.sessionId}/${action}`);
  app.timings = { request: performance.now() - started };
  await afterChange(state, started);
}

// -- files ------------------------------------------------------------------------------------

async function listFiles() {
  const data = await api("GET", "/api/files");
  const select = $("file-select");
  select.replaceChildren();
  for (const path of data.files) {
    const option = document.createElement("option");
    option.value = path;
    option.textContent = path;
    select.append(option);
  }
}

async function listAutosaves() {
  const data = await api("GET", "/api/recovery");
  const select = $("restore-select");
  select.replaceChildren();
  for (const entry of data.sessions) {
    if (entry.open) continue;
    const option = document.createElement("option");
    option.value = entry.id;
    const when = entry.saved_at ? new Date(entry.saved_at * 1000).toLocaleString() : "?";
    const names = entry.objects.map((o) => o.name).join(", ") || "no objects";
    option.textContent = `${entry.source} (${when}): ${names}`;
    select.append(option);
  }
  $("restore-btn").disabled = select.options.length === 0;
}

async function restore(id) {
  if (!id) return;
  setStatus(`restoring ${id} ...`);
  const state = await api("POST", `/api/recovery/${id}/restore`);
  await closeCurrent();
  await loadSession(state);
  showError(null);
  await listAutosaves();
}

async function closeCurrent() {
  if (!app.sessionId) return;
  const id = app.sessionId;
  app.sessionId = null;
  try { await api("DELETE", `/api/sessions/${id}`); } catch (_) { /* expired already */ }
}

async function openPath(path) {
  setStatus(`opening ${path} ...`);
  const state = await api("POST", "/api/sessions", { path });
  await closeCurrent();
  await loadSession(state);
  showError(null);
  await listAutosaves();
}

async function upload(file) {
  setStatus(`uploading ${file.name} ...`);
  const state = await api("POST", `/api/sessions/upload?filename=${encodeURIComponent(file.name)}`, file);
  await closeCurrent();
  await loadSession(state);
  showError(null);
  await listAutosaves();
}

async function save() {
  if (!app.sessionId) return;
  if (app.state.uploaded) {
    const response = await api("GET", `/api/sessions/${app.sessionId}/labels.nii.gz`, undefined, true);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = (app.state.source.replace(/^upload:/, "").replace(/\.(nii\.gz|nii|nrrd|mha)$/i, "")) + "_labels.nii.gz";
    link.click();
    setStatus(`downloaded ${link.download}`);
    return;
  }
  const saved = await api("POST", `/api/sessions/${app.sessionId}/save`, { format: "nii.gz", overwrite: true });
  setStatus(`saved ${saved.path}`);
  app.lastSaved = saved.path;
}

// -- wiring -----------------------------------------------------------------------------------

$("open-btn").addEventListener("click", () => queue(() => openPath($("file-select").value)));
$("upload-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) queue(() => upload(file));
  event.target.value = "";
});
$("undo-btn").addEventListener("click", () => queue(() => history("undo")));
$("redo-btn").addEventListener("click", () => queue(() => history("redo")));
$("reset-btn").addEventListener("click", () => queue(() => history("reset")));
$("save-btn").addEventListener("click", () => queue(save));
$("new-object-btn").addEventListener("click", () => queue(newObject));
$("render-btn").addEventListener("click", toggleRender);
$("restore-btn").addEventListener("click", () => queue(() => restore($("restore-select").value)));

// the 3D render tile costs most of the drawing time without a GPU (software WebGL)
function toggleRender() {
  if (!app.nv || !niivue) return;
  const { SHOW_RENDER } = niivue;
  const on = app.nv.opts.multiplanarShowRender !== SHOW_RENDER.NEVER;
  app.nv.opts.multiplanarShowRender = on ? SHOW_RENDER.NEVER : SHOW_RENDER.ALWAYS;
  $("render-btn").textContent = on ? "3D: off" : "3D: on";
  app.nv.drawScene();
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  const key = event.key.toLowerCase();
  const mod = event.ctrlKey || event.metaKey;
  let handled = true;
  if (mod && key === "z" && !event.shiftKey) queue(() => history("undo"));
  else if (mod && (key === "y" || (key === "z" && event.shiftKey))) queue(() => history("redo"));
  else if (mod && key === "s") queue(save);
  else if (!mod && key === "r") queue(() => history("reset"));
  else if (!mod && key === "n") queue(newObject);
  else if (!mod && key === "v") toggleRender();
  else if (!mod && /^[1-9]$/.test(key) && app.state) {
    const obj = app.state.objects[Number(key) - 1];
    if (obj) queue(() => activate(obj.label));
  } else handled = false;
  if (handled) event.preventDefault();
});

queue(async () => {
  await listFiles();
  await listAutosaves();
  await loadNiivue();
  const wanted = new URLSearchParams(location.search).get("open");
  if (wanted) await openPath(wanted);
  app.ready = true;
});
