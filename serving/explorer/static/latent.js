// dae explorer, the latent space of a VAE: the test images' codes on a plane (their first
// two principal axes above 2-D), any point of it decoded as the pointer hovers or drags,
// one slider per latent dimension (small latents), a manifold of the plane, and a morph.
"use strict";

(function () {
  const $ = dae.$;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const MARGIN = 24;
  const MAX_SLIDERS = 16;
  const state = { version: null, plane: null, z: null, pinned: null, selected: null };
  dae.latent = state; // read by the browser test

  const colour = (label) => PALETTE[((label % 10) + 10) % 10];

  function toCanvas(p) {
    const c = $("scatter");
    const [[x0, x1], [y0, y1]] = state.plane.range;
    return [MARGIN + ((p[0] - x0) / (x1 - x0)) * (c.width - 2 * MARGIN),
      c.height - MARGIN - ((p[1] - y0) / (y1 - y0)) * (c.height - 2 * MARGIN)];
  }

  function toPlane(event) {
    const c = $("scatter");
    const rect = c.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * c.width) / rect.width;
    const y = ((event.clientY - rect.top) * c.height) / rect.height;
    const [[x0, x1], [y0, y1]] = state.plane.range;
    return [[x0 + ((x - MARGIN) / (c.width - 2 * MARGIN)) * (x1 - x0),
      y0 + ((c.height - MARGIN - y) / (c.height - 2 * MARGIN)) * (y1 - y0)], [x, y]];
  }

  const zOf = (p) => state.plane.mean.map((m, i) =>
    m + p[0] * state.plane.axes[0][i] + p[1] * state.plane.axes[1][i]);

  const project = (z) => [0, 1].map((k) =>
    z.reduce((s, v, i) => s + (v - state.plane.mean[i]) * state.plane.axes[k][i], 0));

  function drawScatter() {
    const c = $("scatter");
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, c.width, c.height);
    if (!state.plane) return;
    const { points, labels, pca, ratios } = state.plane;
    ctx.globalAlpha = 0.75;
    points.forEach((p, i) => {
      const [x, y] = toCanvas(p);
      ctx.fillStyle = colour(labels[i]);
      ctx.beginPath();
      ctx.arc(x, y, 2.6, 0, 2 * Math.PI);
      ctx.fill();
    });
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#667085";
    ctx.font = "12px system-ui, sans-serif";
    const pct = (k) => (ratios.length ? ` (${(100 * ratios[k]).toFixed(0)}%)` : "");
    ctx.fillText(pca ? `PC1${pct(0)}` : "z1", c.width - 70, c.height - 6);
    ctx.save();
    ctx.translate(12, 70);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(pca ? `PC2${pct(1)}` : "z2", 0, 0);
    ctx.restore();
    if (state.z) {
      const [x, y] = toCanvas(project(state.z));
      ctx.strokeStyle = "#111";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(x, y, 7, 0, 2 * Math.PI);
      ctx.moveTo(x - 11, y);
      ctx.lineTo(x + 11, y);
      ctx.moveTo(x, y - 11);
      ctx.lineTo(x, y + 11);
      ctx.stroke();
    }
  }

  const decode = dae.latest(async (z, t0, line) => {
    try {
      const out = await dae.post("/api/decode", { version: state.version, z: [z] });
      dae.paint($("decoded"), out.images[0]);
      $("decoded-line").textContent = `${line} · ${(performance.now() - t0).toFixed(0)} ms`;
      dae.show("latent-message", "");
    } catch (e) {
      dae.show("latent-message", e.message);
    }
  });

  function go(z, line, fromSlider = -1) {
    state.z = z;
    drawScatter();
    $("sliders").querySelectorAll("input").forEach((s, i) => {
      if (i !== fromSlider) s.value = z[i];
      s.nextElementSibling.textContent = z[i].toFixed(2);
    });
    decode(z, performance.now(), line);
  }

  function nearest(xy) {
    let best = null;
    let dist = 7 * 7;
    state.plane.points.forEach((p, i) => {
      const [x, y] = toCanvas(p);
      const d = (x - xy[0]) ** 2 + (y - xy[1]) ** 2;
      if (d < dist) [best, dist] = [i, d];
    });
    return best;
  }

  function buildSliders(size, codes) {
    const box = $("sliders");
    box.textContent = "";
    if (size > MAX_SLIDERS) {
      box.textContent = `${size} latent dimensions: walk them on the plane`;
      return;
    }
    for (let i = 0; i < size; i++) {
      const label = document.createElement("span");
      label.textContent = `z${i + 1}`;
      const column = codes.map((z) => z[i]);  // the range covers the codes and the prior's
      const lo = Math.floor(Math.min(-3, ...column));
      const hi = Math.ceil(Math.max(3, ...column));
      const s = Object.assign(document.createElement("input"),
        { type: "range", min: lo, max: hi, step: 0.01, value: 0 });
      s.addEventListener("input", () => {
        const z = state.z.slice();
        z[i] = Number(s.value);
        go(z, `z${i + 1} = ${z[i].toFixed(2)}`, i);
      });
      box.append(label, s, document.createElement("output"));
    }
  }

  async function load(version) {
    state.version = version;
    state.plane = null;
    state.z = state.pinned = null;
    dae.show("latent-message", "");
    $("latent-line").textContent = "";
    $("sliders").textContent = "";
    $("legend").textContent = "";
    $("decoded-line").textContent = "hover over the plane";
    parts(true);
    for (const id of ["decoded", "manifold", "morph"]) {
      const c = $(id);
      c.getContext("2d").clearRect(0, 0, c.width, c.height);
    }
    drawScatter();
    if (version === null) return;
    try {
      const plane = await dae.api(`/api/latent?version=${version}`);
      if (state.version !== version) return;
      state.plane = plane;
      const count = plane.points.length;
      $("latent-line").textContent = plane.note ? `${plane.note}: showing the plane of z1, z2` :
        `${count} test images encoded; ${plane.latent}-D codes` +
        (plane.pca ? ", their first two principal axes" : "");
      for (const label of [...new Set(plane.labels)].sort((a, b) => a - b)) {
        const item = document.createElement("span");
        item.innerHTML = `<i style="background:${colour(label)}"></i>${label}`;
        $("legend").append(item);
      }
      buildSliders(plane.latent, plane.codes);
      state.pinned = plane.mean.slice();
      go(state.pinned, "the codes' mean");
      const sheet = await dae.api(`/api/manifold?version=${version}&n=10`);
      dae.paint($("manifold"), sheet.image);
      if (count > 1) await morph();
    } catch (e) {
      dae.show("latent-message", e.message);
      if (!state.plane) parts(false);
    }
  }

  function parts(shown) {
    for (const el of document.querySelectorAll(".latent-part")) el.hidden = !shown;
  }

  async function morph() {
    try {
      const a = Number($("morph-a").value);
      const b = Number($("morph-b").value);
      const out = await dae.post("/api/morph", { version: state.version, a, b, steps: 10 });
      dae.paint($("morph"), dae.strip([out.a, ...out.images, out.b]));
      dae.show("latent-message", "");
    } catch (e) {
      dae.show("latent-message", e.message);
    }
  }

  function visible() {
    return !$("view-latent").hidden;
  }

  dae.onInfo.push((info, usable) => {
    const select = $("latent-version");
    const before = select.value;
    dae.fill(select, usable);
    if (!before) {
      const vae = usable.find((v) => v.latent);
      if (vae) select.value = String(vae.version);
    }
    if (visible()) load(dae.version("latent-version"));
  });

  document.addEventListener("dae:view", (e) => {
    if (e.detail === "view-latent" && dae.version("latent-version") !== state.version) {
      load(dae.version("latent-version"));
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const c = $("scatter");
    let dragging = false;
    const at = (e) => {
      const [p, xy] = toPlane(e);
      const i = nearest(xy);
      if (i !== null && !dragging) {
        return [state.plane.codes[i], `test image #${i}, label ${state.plane.labels[i]}`, i];
      }
      return [zOf(p), `plane (${p[0].toFixed(2)}, ${p[1].toFixed(2)})`, null];
    };
    c.addEventListener("pointerdown", (e) => {
      if (!state.plane) return;
      dragging = true;
      c.setPointerCapture(e.pointerId);
      const [z, line, i] = at(e);
      if (i !== null) state.selected = i;
      state.pinned = z;
      go(z, line);
    });
    c.addEventListener("pointermove", (e) => {
      if (!state.plane) return;
      const [z, line] = at(e);
      if (dragging) state.pinned = z;
      go(z, line);
    });
    c.addEventListener("pointerup", () => (dragging = false));
    c.addEventListener("pointerleave", () => {
      if (state.plane && state.pinned && !dragging) go(state.pinned, "the pinned point");
    });
    $("latent-version").addEventListener("change", () => load(dae.version("latent-version")));
    $("morph-go").addEventListener("click", morph);
    $("morph-random").addEventListener("click", () => {
      const n = dae.info ? dae.info.examples.count : 0;
      $("morph-a").value = Math.floor(Math.random() * n);
      $("morph-b").value = Math.floor(Math.random() * n);
      morph();
    });
    for (const key of ["a", "b"]) {
      $("morph-pick-" + key).addEventListener("click", () => {
        if (state.selected !== null) $("morph-" + key).value = state.selected;
      });
    }
    drawScatter();
  });
})();
