"""The explorer's client of a TF Serving REST endpoint (`dae serve` or tensorflow/serving):
status, metadata and predict on a named signature, with every failure as one line the page
can show. Only the documented REST API is used, so a port-forwarded TF Serving works too."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import orjson

ENCODE, DECODE, DENOISE = "encode", "decode", "serving_default"


class UpstreamError(Exception):
    """The model server is down or refused a request; one line for the page."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


@dataclass
class RemoteSignature:
    inputs: dict[str, list[int]]  # name -> shape, -1 for any size
    outputs: dict[str, list[int]]


def _shape(info: dict) -> list[int]:
    dims = info.get("tensor_shape", {}).get("dim", [])
    return [int(d.get("size", -1)) for d in dims]


def base_url(server: str) -> str:
    """HOST:PORT (or a URL) -> the REST root URL."""
    server = server.strip().rstrip("/")
    return server if server.startswith(("http://", "https://")) else f"http://{server}"


class Upstream:
    def __init__(self, server: str, model: str, timeout: float = 30.0):
        self.server, self.model = server, model
        self.http = httpx.AsyncClient(base_url=base_url(server), timeout=timeout)

    async def close(self) -> None:
        await self.http.aclose()

    def _path(self, version: int | None) -> str:
        return f"/v1/models/{self.model}" + ("" if version is None else f"/versions/{version}")

    async def _call(self, method: str, path: str, body: bytes | None = None) -> dict:
        try:
            response = await self.http.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
        except httpx.TimeoutException:
            message = f"the model server at {self.server} did not answer in time"
            raise UpstreamError(message, 504) from None
        except httpx.HTTPError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UpstreamError(
                f"the model server at {self.server} is not reachable ({reason}): is it running?"
            ) from None
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            said = data.get("error") if isinstance(data, dict) else response.text[:200]
            code = response.status_code if response.status_code in (400, 404) else 502
            raise UpstreamError(
                f"the model server answered {response.status_code}: {said or 'no message'}", code
            )
        return data

    async def versions(self) -> dict[int, str]:
        """{version: state} of the model, as the server reports them."""
        data = await self._call("GET", self._path(None))
        return {
            int(v["version"]): v.get("state", "UNKNOWN")
            for v in data.get("model_version_status", [])
        }

    async def signatures(self, version: int) -> dict[str, RemoteSignature]:
        data = await self._call("GET", self._path(version) + "/metadata")
        defs = data.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        return {
            name: RemoteSignature(
                {k: _shape(v) for k, v in sig.get("inputs", {}).items()},
                {k: _shape(v) for k, v in sig.get("outputs", {}).items()},
            )
            for name, sig in defs.items()
            if not name.startswith("__")
        }

    async def predict(self, version: int, signature: str, x: np.ndarray) -> dict[str, np.ndarray]:
        """One input tensor through `signature` (columnar, so the reply is named outputs)."""
        body = orjson.dumps(
            {"signature_name": signature, "inputs": np.ascontiguousarray(x, np.float32)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        data = await self._call("POST", self._path(version) + ":predict", body)
        outputs = data.get("outputs")
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        try:
            return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
        except (TypeError, ValueError):
            raise UpstreamError(f"the model server's '{signature}' reply is not a tensor") from None
