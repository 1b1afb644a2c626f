"""Dense float tensors in TF Serving's JSON, at a fraction of the generic cost.

Images are nested lists of ~50k numbers per batch of 64: generic JSON builds a Python float
per pixel (orjson.loads + np.asarray: ~27 ms a batch), and orjson spends most of its dump
time on the one-element innermost lists of a 1-channel image. Here a body made only of a
tensor (and optionally its signature name) is parsed by simdjson straight into a buffer,
after checking that its brackets are exactly those of a rectangular array of the shape its
first elements give; trailing unit dimensions are dumped by rewriting the commas. Anything
else (named inputs, strings, escapes, a ragged or non-numeric array) returns None and the
caller takes the generic path, which also writes the error messages.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import simdjson

from dae.serving.apis.json_numbers import decimal, dumps  # noqa: F401 (this module's API)

_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b"[],")
MAX_RANK = 32  # deeper nesting takes the generic path, which names the problem


@functools.lru_cache(maxsize=64)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a rectangular array of `shape`, numbers left out."""
    inner = b"[" + b"," * (shape[-1] - 1) + b"]"
    for d in reversed(shape[:-1]):
        inner = b"[" + b",".join([inner] * d) + b"]"
    return inner


def _shape(value) -> tuple[int, ...] | None:
    shape = []
    while isinstance(value, simdjson.Array):
        if not len(value) or len(shape) == MAX_RANK:
            return None
        shape.append(len(value))
        value = value[0]
    return tuple(shape) if shape and isinstance(value, float | int) else None


def _pairs(items: list[int]):
    return zip(items[::2], items[1::2], strict=True)


def loads(raw: bytes, keys: tuple[str, ...]) -> tuple[str, np.ndarray, str | None] | None:
    """(key, float64 array, signature_name) when `raw` is an object holding one of `keys`
    whose value is a rectangular numeric array, and at most a string signature_name besides;
    None for any other body, valid or not."""
    quotes, at = [], raw.find(b'"')
    while at >= 0 and len(quotes) <= 6:
        quotes.append(at)
        at = raw.find(b'"', at + 1)
    if b"\\" in raw or len(quotes) > 6 or len(quotes) % 2:
        return None  # escapes, or more strings than two keys and a signature name
    parser = simdjson.Parser()
    try:
        doc = parser.parse(raw)
        if not isinstance(doc, simdjson.Object):
            return None
        names = set(doc.keys())
        found = [k for k in keys if k in names]
        sig = doc.get("signature_name")
        if (
            len(found) != 1
            or names - {found[0], "signature_name"}
            or not isinstance(sig, str | None)
        ):
            return None
        tensor = doc[found[0]]
        shape = _shape(tensor)
        if shape is None:
            return None
        flat = np.frombuffer(tensor.as_buffer(of_type="d"), np.float64)
        del tensor, doc  # the parser may not be reused while they live
    except (ValueError, TypeError, RuntimeError, KeyError):
        return None
    if len(flat) != math.prod(shape):
        return None
    # Outside strings (no escapes, so quotes pair up) the only brackets are the tensor's, and
    # the only other commas separate the object's members: they can only lead or trail.
    outside = raw
    if any(raw[a + 1 : b].translate(None, _NOT_STRUCTURE) for a, b in _pairs(quotes)):
        bounds = [-1, *quotes, len(raw)]  # a string holds some: leave the strings out
        outside = b"".join(raw[a + 1 : b] for a, b in _pairs(bounds))
    structure = outside.translate(None, _NOT_STRUCTURE).strip(b",")
    if structure != _skeleton(shape):
        return None
    return found[0], flat.reshape(shape), sig
