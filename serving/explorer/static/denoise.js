// dae explorer, the denoise playground: the input (drawn, uploaded or a test image) is the
// clean image; the explorer corrupts it, the model server denoises it, and the page shows
// clean, noisy and denoised (one or two versions) with PSNR and SSIM against the clean.
"use strict";

(function () {
  const $ = dae.$;
  const state = { source: null, seed: 1, shape: [28, 28, 1] };
  let drawing = false;
  let last = null;

  function shapeOf(version) {
    const v = (dae.usable || []).find((x) => x.version === version);
    return v ? v.shape : state.shape;
  }

  function blank(shape) {
    return { shape, data: new Uint8Array(shape[0] * shape[1] * shape[2]) };
  }

  // The drawing canvas holds the input enlarged (scale k): strokes go on top of it.
  function scale() {
    return Math.max(1, Math.round(280 / Math.max(state.shape[0], state.shape[1])));
  }

  function showSource(image) {
    const canvas = $("draw");
    const k = scale();
    canvas.width = image.shape[1] * k;
    canvas.height = image.shape[0] * k;
    const small = document.createElement("canvas");
    dae.paint(small, image);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    state.source = image;
    dae.paint($("clean"), image);
  }

  // The drawing at the model's size: area averaging of the enlarged canvas.
  function fromCanvas() {
    const [h, w, c] = state.shape;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const ctx = small.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage($("draw"), 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const data = new Uint8Array(h * w * c);
    for (let i = 0; i < h * w; i++) {
      for (let j = 0; j < c; j++) data[i * c + j] = rgba[4 * i + (c === 3 ? j : 0)];
    }
    return { shape: [h, w, c], data };
  }

  function metrics(r) {
    return r.psnr === undefined ? "(no clean image)" :
      `PSNR ${r.psnr.toFixed(2)} dB\nSSIM ${r.ssim.toFixed(3)}`;
  }

  const run = dae.latest(async (t0) => {
    const a = dae.version("version-a");
    if (a === null || !state.source) return;
    const b = dae.version("version-b");
    const versions = b === null || b === a ? [a] : [a, b];
    try {
      const out = await dae.post("/api/denoise", {
        image: state.source, kind: $("kind").value, level: Number($("level").value),
        seed: state.seed, versions,
      });
      dae.paint($("noisy"), out.noisy);
      $("noisy-metrics").textContent = metrics(out);
      out.results.forEach((r, i) => {
        const key = i === 0 ? "a" : "b";
        dae.paint($("denoised-" + key), r.denoised);
        $("label-" + key).textContent = `denoised, version ${r.version}`;
        $("metrics-" + key).textContent = metrics(r);
      });
      $("figure-b").hidden = versions.length < 2;
      $("clean").parentElement.hidden = !out.clean_known; // kind "none": no clean image
      dae.show("denoise-message", "");
      const ms = dae.record(t0);
      const server = out.results.map((r) => r.ms.toFixed(0)).join(" / ");
      $("latency").textContent = `input → image: ${ms.toFixed(0)} ms (model ${server} ms)`;
    } catch (e) {
      dae.show("denoise-message", e.message);
    }
  });

  const update = () => run(performance.now());

  function point(event) {
    const canvas = $("draw");
    const rect = canvas.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) * canvas.width) / rect.width,
      ((event.clientY - rect.top) * canvas.height) / rect.height,
    ];
  }

  function stroke(event) {
    const ctx = $("draw").getContext("2d");
    const p = point(event);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2.2 * scale();
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...(last || p));
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
    state.source = fromCanvas();
    dae.paint($("clean"), state.source);
    $("source-line").textContent = "your drawing";
    update();
  }

  async function upload(file) {
    dae.show("input-message", "");
    const a = dae.version("version-a");
    try {
      if (a === null) throw new Error("no model version to size the upload for");
      const out = await dae.api(`/api/upload?version=${a}`, { method: "POST", body: file });
      showSource(out.image);
      $("source-line").textContent = `uploaded ${file.name}`;
      update();
    } catch (e) {
      dae.show("input-message", `${file.name}: ${e.message}`);
    }
  }

  let lastExample = 0; // answers can come back out of order: the latest choice wins

  async function testImage(index) {
    dae.show("input-message", "");
    const mine = ++lastExample;
    try {
      const out = await dae.api("/api/example" + (index === undefined ? "" : `?index=${index}`));
      if (mine !== lastExample) return;
      $("example-index").value = out.index;
      $("example-index").max = out.count - 1;
      showSource(out.image);
      $("source-line").textContent = `test image #${out.index} of ${out.count}, label ${out.label}`;
      update();
    } catch (e) {
      dae.show("input-message", e.message);
    }
  }

  function onInfo(info, usable) {
    dae.fill($("version-a"), usable);
    dae.fill($("version-b"), usable, { none: true });
    const a = dae.version("version-a");
    if (a === null) return;
    const shape = shapeOf(a);
    const changed = shape.join() !== state.shape.join();
    state.shape = shape;
    if (!info.examples.count) {
      $("random").disabled = $("example-index").disabled = true;
      $("random").title = info.examples.note;
    }
    if (!state.source || changed) {
      if (info.examples.count) testImage();
      else showSource(blank(shape));
    } else update();
  }
  dae.onInfo.push(onInfo);

  document.addEventListener("DOMContentLoaded", () => {
    const canvas = $("draw");
    canvas.addEventListener("pointerdown", (e) => {
      drawing = true;
      last = null;
      canvas.setPointerCapture(e.pointerId);
      stroke(e);
    });
    canvas.addEventListener("pointermove", (e) => drawing && stroke(e));
    for (const type of ["pointerup", "pointercancel"]) {
      canvas.addEventListener(type, () => (drawing = false));
    }
    $("clear").addEventListener("click", () => {
      showSource(blank(state.shape));
      $("source-line").textContent = "draw a digit";
      update();
    });
    $("random").addEventListener("click", () => testImage());
    $("example-index").addEventListener("change", (e) => {
      if (e.target.value !== "") testImage(Number(e.target.value)); // cleared: not #0
    });
    $("upload").addEventListener("change", (e) => {
      if (e.target.files.length) upload(e.target.files[0]);
      e.target.value = "";
    });
    $("level").addEventListener("input", () => {
      $("level-value").textContent = Number($("level").value).toFixed(2);
      update();
    });
    $("kind").addEventListener("change", update);
    $("reseed").addEventListener("click", () => {
      state.seed += 1;
      update();
    });
    $("version-a").addEventListener("change", () => onInfo(dae.info, dae.usable));
    $("version-b").addEventListener("change", update);
  });
})();
