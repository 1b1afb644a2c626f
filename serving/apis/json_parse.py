"""Request bodies read as TF Serving reads them (util/json_tensor.cc ParseJson), and JSON
values quoted in its error messages (JsonValueToDebugString, JsonTypeString).

TF Serving parses with rapidjson's kParseNanAndInfFlag | kParseStopWhenDoneFlag: NaN,
Infinity and -Infinity are numbers, and whatever follows the document is ignored. orjson
takes every body without them; the others are read again by the standard library's
parser, which takes those tokens, and its errors are worded as rapidjson's
(GetParseError_En) with their byte offset: "JSON Parse error: Invalid value. at offset: 15".
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

import orjson

_DEBUG_LIMIT = 256  # kMaxJsonDebugStringBytes


class JsonError(ValueError):
    """A body TF Serving refuses: its message is TF Serving's."""


def _too_big(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonError(text)
    return value


_DECODER = json.JSONDecoder(parse_float=_too_big)
_RAPIDJSON = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _container(text: str, pos: int) -> str:
    """The bracket of the innermost array or object open at `pos`."""
    stack = []
    for m in _TOKENS.finditer(text, 0, pos):
        token = m.group()
        if token in "[{":
            stack.append(token)
        elif token in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def _rapidjson_error(text: str, error: json.JSONDecodeError) -> tuple[str, int]:
    """rapidjson's message for the error the standard library found, and its offset."""
    msg, pos = error.msg, error.pos
    if msg.startswith("Expecting ',' delimiter"):
        before, at = text[pos - 1 : pos], text[pos : pos + 1]
        if before.isdigit() and at == ".":
            return "Miss fraction part in number.", pos + 1
        if before.isdigit() and at in ("e", "E"):
            sign = text[pos + 1 : pos + 2] in ("+", "-")
            return "Miss exponent in number.", pos + 1 + sign
        if _container(text, pos) == "{":
            return "Missing a comma or '}' after an object member.", pos
        return "Missing a comma or ']' after an array element.", pos
    if msg.startswith("Unterminated string"):
        return _RAPIDJSON["Unterminated string starting at"], len(text)
    for start, message in _RAPIDJSON.items():
        if msg.startswith(start):
            return message, pos
    return "Invalid value.", pos


def parse(raw: bytes):
    """The JSON value of a request body, as TF Serving's ParseJson reads it; JsonError
    otherwise (an empty body, bad syntax, a number too big for a double)."""
    if not raw:
        raise JsonError("JSON Parse error: The document is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    text = raw.decode("utf-8", "surrogateescape")  # rapidjson does not check UTF-8 either
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        if start == len(text):
            raise json.JSONDecodeError("The document is empty.", text, start)
        return _DECODER.raw_decode(text, start)[0]
    except json.JSONDecodeError as e:
        message, pos = (
            ("The document is empty.", start)
            if e.pos == len(text) == start
            else (_rapidjson_error(text, e))
        )
    except JsonError as e:
        message, pos = "Number too big to be stored in double.", max(text.find(str(e)), 0)
    except RecursionError:
        message, pos = "Terminate parsing due to Handler error.", 0
    offset = len(text[:pos].encode("utf-8", "surrogateescape"))
    raise JsonError(f"JSON Parse error: {message} at offset: {offset}") from None


def json_type(value) -> str:
    """JsonTypeString."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    kinds = ((dict, "Object"), (list, "Array"), (str, "String"), (int | float, "Number"))
    return next(name for t, name in kinds if isinstance(value, t))


_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)} | {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}


def _string(text: str) -> bytes:
    return ('"' + text.translate(_ESCAPES) + '"').encode("utf-8", "surrogateescape")


def _double(value: float) -> bytes | None:
    """rapidjson's Writer::Double (Grisu2 digits, Prettify's layout); None for NaN and
    infinities, which it refuses to write."""
    if not math.isfinite(value):
        return None
    if value == 0:
        return b"-0.0" if math.copysign(1, value) < 0 else b"0.0"
    sign, places, k = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, places)).rstrip("0")
    k += len(places) - len(digits)  # value = digits * 10**k
    n, kk = len(digits), len(digits) + k
    if k >= 0 and kk <= 21:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        out = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        out = "0." + "0" * -kk + digits
    else:
        out = digits[0] + ("." + digits[1:] if n > 1 else "") + f"e{kk - 1}"
    return (("-" if sign else "") + out).encode()


def debug_string(value) -> str:
    """JsonValueToDebugString: rapidjson's PrettyWriter (4-space indents, arrays on one
    line), stopped at the first value that starts past 256 bytes, or at a NaN or infinity
    (which the writer refuses: what was written so far stays)."""
    out: list[bytes] = []
    size = 0

    def put(chunk: bytes) -> None:
        nonlocal size
        out.append(chunk)
        size += len(chunk)

    def write(v, depth: int, prefix: bytes) -> bool:
        if size >= _DEBUG_LIMIT:
            return False
        if isinstance(v, dict):
            put(prefix + b"{")
            for i, (key, item) in enumerate(v.items()):
                if size >= _DEBUG_LIMIT:
                    return False
                indent = b" " * 4 * (depth + 1)
                put((b",\n" if i else b"\n") + indent + _string(key))
                if not write(item, depth + 1, b": "):
                    return False
            if size >= _DEBUG_LIMIT:
                return False
            put((b"\n" + b" " * 4 * depth if v else b"") + b"}")
        elif isinstance(v, list):
            put(prefix + b"[")
            for i, item in enumerate(v):
                if not write(item, depth + 1, b", " if i else b""):
                    return False
            if size >= _DEBUG_LIMIT:
                return False
            put(b"]")
        elif isinstance(v, str):
            put(prefix + _string(v))
        elif v is None or isinstance(v, bool):
            put(prefix + orjson.dumps(v))
        elif isinstance(v, int) and -(2**63) <= v < 2**64:
            put(prefix + str(v).encode())
        else:
            text = _double(float(v))
            put(prefix)
            if text is None:
                return False
            put(text)
        return True

    write(value, 0, b"")
    return b"".join(out).decode("utf-8", "replace")
