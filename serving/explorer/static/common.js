// dae explorer, shared: the JSON API, messages, drawing images, tabs, the model's versions.
// Plain scripts with no dependencies: the page must work with no network.
"use strict";

const dae = (window.dae = {
  info: null, // /api/info: the model's versions and the test images
  latencies: [], // event -> image drawn, ms (read by the browser test)
  onInfo: [], // callbacks when versions are known
});

dae.$ = (id) => document.getElementById(id);

// One line for any failure: the server's {"error"}, or what went wrong on the way.
dae.api = async function (path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the explorer's server is not reachable (was `dae explore` stopped?)");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    /* not JSON: said below */
  }
  if (!response.ok || body === null) {
    const said = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(said);
  }
  return body;
};

dae.post = (path, obj) =>
  dae.api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(obj, (k, v) => (ArrayBuffer.isView(v) ? Array.from(v) : v)),
  });

dae.show = function (id, text) {
  const el = dae.$(id);
  const target = dae.$(id + "-text") || el;
  target.textContent = text || "";
  el.hidden = !text;
};

// Run `fn` for the latest call only: at most one request in flight, the last state wins.
dae.latest = function (fn) {
  let running = false;
  let pending = null;
  return function (...args) {
    pending = args;
    if (running) return;
    running = true;
    (async () => {
      while (pending) {
        const now = pending;
        pending = null;
        try {
          await fn(...now);
        } catch (e) {
          console.error(e);
        }
      }
      running = false;
    })();
  };
};

// {"shape": [h, w, c], "data": [uint8]} -> canvas pixels (CSS enlarges them, unsmoothed).
dae.paint = function (canvas, image) {
  const [h, w, c] = image.shape;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(w, h);
  const d = image.data;
  for (let i = 0; i < h * w; i++) {
    const r = d[i * c];
    out.data[4 * i] = r;
    out.data[4 * i + 1] = c === 3 ? d[i * c + 1] : r;
    out.data[4 * i + 2] = c === 3 ? d[i * c + 2] : r;
    out.data[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  canvas.style.aspectRatio = `${w} / ${h}`;
};

// Images side by side (a morph strip) as one image.
dae.strip = function (images) {
  const [h, w, c] = images[0].shape;
  const n = images.length;
  const data = new Uint8Array(h * w * n * c);
  images.forEach((img, k) => {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w * c; x++) data[(y * w * n + k * w) * c + x] = img.data[y * w * c + x];
    }
  });
  return { shape: [h, w * n, c], data };
};

dae.record = function (t0) {
  const ms = performance.now() - t0;
  dae.latencies.push(ms);
  return ms;
};

dae.fill = function (select, versions, { none = false, keep = true } = {}) {
  const old = select.value;
  select.textContent = "";
  if (none) select.add(new Option("—", ""));
  for (const v of versions) {
    const label = `${v.version}${v.latent ? " (VAE, z " + v.latent + ")" : ""}`;
    select.add(new Option(label, String(v.version)));
  }
  if (keep && [...select.options].some((o) => o.value === old)) select.value = old;
};

dae.loadInfo = async function () {
  try {
    const info = await dae.api("/api/info");
    dae.info = info;
    dae.show("message", "");
    const ok = info.versions.filter((v) => v.state === "AVAILABLE" && !v.error);
    const states = info.versions.map((v) => `${v.version} ${v.state.toLowerCase()}`);
    dae.$("model-line").textContent =
      `model '${info.model}' at ${info.server}: versions ${states.join(", ") || "none"}`;
    if (!ok.length) {
      const why = info.versions.map((v) => v.error).filter(Boolean)[0];
      dae.show("message", why || `model '${info.model}' has no available version yet`);
    }
    dae.usable = ok;
    dae.onInfo.forEach((f) => f(info, ok));
  } catch (e) {
    dae.$("model-line").textContent = "not connected";
    dae.show("message", e.message);
  }
};

dae.version = (id) => {
  const v = dae.$(id).value;
  return v === "" ? null : Number(v);
};

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) {
        t.classList.toggle("active", t === tab);
        dae.$(t.dataset.view).hidden = t !== tab;
      }
      document.dispatchEvent(new CustomEvent("dae:view", { detail: tab.dataset.view }));
    });
  }
  dae.$("retry").addEventListener("click", dae.loadInfo);
  dae.loadInfo();
});
