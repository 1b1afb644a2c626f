"""The explorer's web app: the page, its static files, and a small JSON API that proxies
what the page needs to the model server (so the browser never talks to it: no
cross-origin trouble, and the model server's port need not be reachable from the browser).

Images travel as {"shape": [H, W, C], "data": [uint8, ...]} (row-major HWC): what a canvas
draws, and a quarter of float JSON. Every failure is {"error": "one line"} with a 4xx/5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dae.serving.explorer import imaging
from dae.serving.explorer.examples import TestImages
from dae.serving.explorer.upstream import DECODE, DENOISE, ENCODE, Upstream, UpstreamError

log = logging.getLogger("dae.serving.explorer")
STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_DECODE = 400  # z rows a page may ask for at once (a 20x20 manifold)


class BadRequest(ValueError):
    """A request the page should not have sent; one line."""


def _json(obj, code: int = 200) -> Response:
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=code, media_type="application/json")


def image_json(x: np.ndarray) -> dict:
    """float [0, 1] or uint8 HWC -> the wire format."""
    if x.dtype != np.uint8:
        x = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return {"shape": list(x.shape), "data": x.ravel()}


def image_from_json(obj, shape: tuple[int, int, int]) -> np.ndarray:
    """The wire format -> float32 HWC in [0, 1] of the model's shape."""
    if not isinstance(obj, dict) or "data" not in obj or "shape" not in obj:
        raise BadRequest("'image' must be an object with 'shape' and 'data'")
    if tuple(obj["shape"]) != tuple(shape):
        raise BadRequest(f"the image is {_dims(obj['shape'])}, the model takes {_dims(shape)}")
    try:
        data = np.asarray(obj["data"], np.float32)
    except (TypeError, ValueError):
        raise BadRequest("the image's data must be numbers") from None
    if data.size != int(np.prod(shape)) or data.min(initial=0) < 0 or data.max(initial=0) > 255:
        raise BadRequest("the image's data must be H*W*C values in 0..255")
    return data.reshape(shape) / np.float32(255.0)


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


class Explorer:
    """Holds the upstream client, the test images and per-version caches."""

    def __init__(self, upstream: Upstream, examples: TestImages | None, examples_note: str):
        self.upstream, self.examples, self.examples_note = upstream, examples, examples_note
        self.signatures: dict[int, dict] = {}  # a version's signatures never change
        self.latent: dict[int, dict] = {}
        self.rng = np.random.default_rng()

    async def sigs(self, version: int) -> dict:
        if version not in self.signatures:
            self.signatures[version] = await self.upstream.signatures(version)
        return self.signatures[version]

    async def shape(self, version: int) -> tuple[int, int, int]:
        sig = (await self.sigs(version)).get(DENOISE)
        if sig is None or len(sig.inputs) != 1:
            raise BadRequest(f"version {version} has no one-input '{DENOISE}' signature")
        shape = tuple(next(iter(sig.inputs.values()))[1:])
        if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
            raise BadRequest(f"version {version} takes images of shape {shape}: not HxWx1 or x3")
        return shape

    async def latent_size(self, version: int) -> int:
        sigs = await self.sigs(version)
        if ENCODE not in sigs or DECODE not in sigs:
            raise BadRequest(
                f"version {version} of '{self.upstream.model}' has no '{ENCODE}' and "
                f"'{DECODE}' signatures: the latent explorer needs a VAE"
            )
        return next(iter(sigs[DECODE].inputs.values()))[-1]

    def examples_fit(self, shape) -> str | None:
        """Why the test images cannot go to a model of `shape`, or None."""
        if self.examples is None:
            return self.examples_note
        have = tuple(self.examples.images.shape[1:])
        if have != tuple(shape):
            return f"the test images are {_dims(have)} but the model takes {_dims(shape)}"
        return None

    async def info(self) -> dict:
        states = await self.upstream.versions()
        versions = []
        for v, state in sorted(states.items(), reverse=True):
            entry = {"version": v, "state": state}
            if state == "AVAILABLE":
                try:
                    entry["shape"] = list(await self.shape(v))
                    entry["signatures"] = sorted(await self.sigs(v))
                    latent = DECODE in entry["signatures"] and ENCODE in entry["signatures"]
                    entry["latent"] = await self.latent_size(v) if latent else None
                    entry["examples"] = self.examples_fit(entry["shape"])
                except (BadRequest, UpstreamError) as e:
                    entry["error"] = str(e)
            versions.append(entry)
        count = 0 if self.examples is None else len(self.examples.images)
        examples = {"count": count, "note": self.examples_note}
        return {
            "server": self.upstream.server,
            "model": self.upstream.model,
            "versions": versions,
            "examples": examples,
        }

    async def denoise(self, body: dict) -> dict:
        versions = body.get("versions") or []
        if not versions or not all(isinstance(v, int) for v in versions) or len(versions) > 2:
            raise BadRequest("'versions' must list one or two version numbers")
        shape = await self.shape(versions[0])
        clean = image_from_json(body.get("image"), shape)
        kind = str(body.get("kind", "gaussian"))
        try:
            level, seed = float(body.get("level", 0.0)), int(body.get("seed", 0))
        except (TypeError, ValueError):
            raise BadRequest("'level' must be a number and 'seed' an integer") from None
        noisy = imaging.corrupt(clean, kind, level, seed)
        for v in versions[1:]:
            if await self.shape(v) != shape:
                raise BadRequest(f"versions {versions[0]} and {v} take different image shapes")

        async def run(v: int) -> dict:
            start = time.perf_counter()
            out = await self.upstream.predict(v, DENOISE, noisy[None])
            denoised = next(iter(out.values()))[0]
            result = {
                "version": v,
                "denoised": image_json(denoised),
                "ms": round((time.perf_counter() - start) * 1e3, 1),
            }
            if kind != "none":
                result |= {
                    "psnr": imaging.psnr(denoised, clean),
                    "ssim": imaging.ssim(denoised, clean),
                }
            return result

        results = await asyncio.gather(*(run(v) for v in versions))
        out = {"noisy": image_json(noisy), "results": results, "clean_known": kind != "none"}
        if kind != "none":
            out |= {"psnr": imaging.psnr(noisy, clean), "ssim": imaging.ssim(noisy, clean)}
        return out

    async def decode(self, version: int, z: np.ndarray) -> np.ndarray:
        size = await self.latent_size(version)
        if z.ndim != 2 or z.shape[1] != size or not 0 < len(z) <= MAX_DECODE:
            raise BadRequest(f"'z' must be 1 to {MAX_DECODE} rows of {size} numbers")
        if not np.isfinite(z).all():
            raise BadRequest("'z' must be finite numbers")
        return next(iter((await self.upstream.predict(version, DECODE, z)).values()))

    async def encode(self, version: int, images: np.ndarray) -> np.ndarray:
        out = await self.upstream.predict(version, ENCODE, images.astype(np.float32) / 255.0)
        if "z_mean" not in out:
            raise UpstreamError(f"version {version}'s '{ENCODE}' reply has no z_mean")
        return out["z_mean"]

    async def plane(self, version: int) -> dict:
        """The test images' codes on their PCA plane (or z1, z2 with no test images)."""
        if version in self.latent:
            return self.latent[version]
        size = await self.latent_size(version)
        note = self.examples_fit(await self.shape(version))
        if note is None:
            codes = await self.encode(version, self.examples.images)
            points, mean, axes, ratios = imaging.pca2(codes)
            lo, hi = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
            pad = (hi - lo) * 0.1 + 1e-3
            labels = self.examples.labels
        else:  # the prior's plane: N(0, I) puts nearly everything within 3 of 0
            codes, points, labels = np.zeros((0, size)), np.zeros((0, 2)), np.zeros(0, int)
            mean, axes, ratios = np.zeros(size), np.eye(2, size), []
            lo, hi, pad = np.full(2, -3.0), np.full(2, 3.0), np.zeros(2)
        plane = {
            "version": version,
            "latent": size,
            "pca": size > 2,
            "note": note,
            "points": points.astype(np.float32),
            "labels": labels,
            "ratios": ratios,
            "codes": codes.astype(np.float32),
            "mean": mean,
            "axes": axes,
            "range": np.stack([lo - pad, hi + pad], axis=1),
        }
        self.latent[version] = plane
        return plane

    async def manifold(self, version: int, n: int) -> dict:
        if not 2 <= n <= 20:
            raise BadRequest("the manifold is 2 to 20 images a side")
        plane = await self.plane(version)
        (x0, x1), (y0, y1) = plane["range"]
        xs, ys = np.linspace(x0, x1, n), np.linspace(y1, y0, n)  # top row: the largest y
        grid = np.array([[x, y] for y in ys for x in xs])
        images = await self.decode(version, plane["mean"] + grid @ plane["axes"])
        h, w, c = images.shape[1:]
        sheet = images.reshape(n, n, h, w, c).transpose(0, 2, 1, 3, 4).reshape(n * h, n * w, c)
        return {"image": image_json(sheet), "n": n, "range": plane["range"]}

    async def morph(self, version: int, a: int, b: int, steps: int) -> dict:
        if self.examples is None:
            raise BadRequest(self.examples_note)
        count = len(self.examples.images)
        if not (0 <= a < count and 0 <= b < count):
            raise BadRequest(f"test image numbers go from 0 to {count - 1}")
        if not 2 <= steps <= 20:
            raise BadRequest("a morph has 2 to 20 steps")
        await self.latent_size(version)
        za, zb = await self.encode(version, self.examples.images[[a, b]])
        t = np.linspace(0.0, 1.0, steps)[:, None]
        images = await self.decode(version, (1 - t) * za + t * zb)
        ends = self.examples.images[[a, b]]
        return {
            "images": [image_json(x) for x in images],
            "a": image_json(ends[0]),
            "b": image_json(ends[1]),
        }

    def example(self, index: int | None) -> dict:
        if self.examples is None:
            raise BadRequest(self.examples_note)
        count = len(self.examples.images)
        index = int(self.rng.integers(count)) if index is None else index
        if not 0 <= index < count:
            raise BadRequest(f"test image numbers go from 0 to {count - 1}")
        return {
            "index": index,
            "label": int(self.examples.labels[index]),
            "count": count,
            "image": image_json(self.examples.images[index]),
        }


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None and name == "version":
            raise BadRequest("'version' is required")
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer, got '{raw}'") from None


async def _read(request: Request, what: str = "the request") -> bytes:
    """The body, refused past MAX_UPLOAD_BYTES before it is all in memory."""
    too_big = BadRequest(f"{what} is over {MAX_UPLOAD_BYTES // 2**20} MiB")
    if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(request: Request) -> dict:
    try:
        body = orjson.loads(await _read(request))
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def make_app(explorer: Explorer) -> Starlette:
    async def api(request: Request) -> Response:
        try:
            return _json(await handle(request, request.path_params["name"]))
        except (BadRequest, imaging.ImageError) as e:
            return _json({"error": str(e)}, 400)
        except UpstreamError as e:
            return _json({"error": str(e)}, e.status)
        except Exception as e:  # a bug of ours: a line on the page, the traceback in the log
            log.exception("internal error on %s", request.url.path)
            return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    async def handle(request: Request, name: str):
        get = request.method == "GET"
        if name == "info" and get:
            return await explorer.info()
        if name == "example" and get:
            return explorer.example(_int(request, "index"))
        if name == "latent" and get:
            plane = await explorer.plane(_int(request, "version"))
            return {k: v for k, v in plane.items() if k != "version"}
        if name == "manifold" and get:
            return await explorer.manifold(_int(request, "version"), _int(request, "n", 10))
        if name == "upload" and not get:
            raw = await _read(request, "the upload")
            shape = await explorer.shape(_int(request, "version"))
            return {"image": image_json(imaging.decode_upload(raw, shape))}
        if name == "denoise" and not get:
            return await explorer.denoise(await _body(request))
        if name == "decode" and not get:
            body = await _body(request)
            try:
                z = np.asarray(body.get("z"), np.float32)
            except (TypeError, ValueError):
                raise BadRequest("'z' must be a list of rows of numbers") from None
            if not isinstance(body.get("version"), int):
                raise BadRequest("'version' must be an integer")
            images = await explorer.decode(body["version"], z)
            return {"images": [image_json(x) for x in images]}
        if name == "morph" and not get:
            body = await _body(request)
            args = [body.get(k) for k in ("version", "a", "b")] + [body.get("steps", 10)]
            if not all(isinstance(x, int) for x in args):
                raise BadRequest("'version', 'a', 'b' and 'steps' must be integers")
            return await explorer.morph(*args)
        raise BadRequest(f"no such call: {request.method} /api/{name}")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await explorer.upstream.close()

    routes = [
        Route("/", index),
        Route("/api/{name}", api, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
