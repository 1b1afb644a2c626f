"""Numbers as TF Serving writes them (util/json_tensor.cc WriteDecimal), at orjson's speed.

WriteDecimal prints a float with absl::StrCat, printf's "%g" (6 significant digits), and,
when that text does not read back as the same float (absl::SimpleAtof), with "%.9g"
("%.17g" for a double); a whole number without an exponent gets ".0"; NaN and infinities
are the tokens NaN, Infinity and -Infinity. So 9e6 is `9e+06`, 2.000001f `2.00000095`.

A float32 array is written without a Python float per element: its 6 or 9 significant
digits are x * 10**s rounded in float64 (exact but next to a tie, where the product's
rounding could decide: those are left to `decimal`), the value they spell is handed to
orjson as a float64 (whose shortest text is exactly those digits, in fixed notation for
1e-4 <= |x| < 1e9, the "%g" fixed range), and the exponent of the numbers "%g" writes in
scientific notation is spliced in after them. What falls outside (|x| < 1e-14, |x| >=
1e6, doubles, NaN and infinities) is written one by one by `decimal`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import orjson

_BLOCK = 8192
_FEW = 64  # numbers written one by one rather than spliced in
_POW10 = np.array([10.0**i for i in range(23)])  # exact doubles
# AddSingleValueAndAdvance's types (no uint16, half, complex, ...)
_WRITABLE = {np.dtype(t) for t in ["f4", "f8", "i1", "i2", "i4", "i8", "u1", "u4", "u8", "?"]}


class UnwritableType(ValueError):
    """A tensor dtype TF Serving's JSON has no writer for (half, complex, ...)."""


def _f32_round_trips(text: str, f: np.float32) -> bool:
    """absl::SimpleAtof(text) == f: the exact decimal rounds (to nearest, ties to even) to f."""
    exact, here = Fraction(text), Fraction(float(f))
    below = Fraction(float(np.nextafter(f, np.float32(-np.inf))))
    with np.errstate(over="ignore"):
        above = np.nextafter(f, np.float32(np.inf))
    up = here + (here - below) / 2 if np.isinf(above) else (here + Fraction(float(above))) / 2
    down = (here + below) / 2
    if down < exact < up:
        return True
    return exact in (down, up) and not int(f.view(np.uint32)) & 1


def decimal(value, dtype=np.float32) -> bytes:
    """WriteDecimal of one float32 (or float64) value."""
    f = np.dtype(dtype).type(value)
    if np.isnan(f):
        return b"NaN"
    if np.isinf(f):
        return b"-Infinity" if f < 0 else b"Infinity"
    text = f"{float(f):g}"
    if f.dtype == np.float32:
        if not _f32_round_trips(text, f):
            text = f"{float(f):.9g}"
    elif float(text) != f:
        text = f"{float(f):.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


def _scaled(a, s):
    """(round-half-even of a * 10**s, that product, whether its rounding is in doubt): the
    product of a float32 and an exact power of ten is off by at most half an ulp, which can
    only matter next to a tie."""
    y = a * _POW10[np.clip(s, 0, 22)]
    q = np.rint(y)
    return q, y, np.abs(np.abs(y - q) - 0.5) <= y * 2.0**-51


def _f32_digits(x: np.ndarray):
    """For float32 values: (float64 of the decimal WriteDecimal writes, its exponent if
    written "%g"-style in scientific notation, mask of those needing it, mask of the
    elements done here: not those whose rounding or round trip is in doubt)."""
    a = np.abs(x).astype(np.float64)
    k = np.floor(np.log10(np.where(a > 0, a, 1.0))).astype(np.int64)  # 10**k <= a
    s6 = 5 - k
    q6, y6, doubt = _scaled(a, s6)
    doubt |= (q6 < 1e5) | (q6 > 1e6)  # log10 one off next to a power of ten
    # round trip: within half the gap to the next float32 (a quarter below a power of two)
    m, e = np.frexp(a)
    half_gap = np.ldexp(_POW10[np.clip(s6, 0, 22)], e - 25) * np.where(
        (m == 0.5) & (q6 < y6), 0.5, 1.0
    )
    miss = np.abs(q6 - y6) - half_gap
    doubt |= np.abs(miss) <= y6 * 2.0**-51
    ok6 = miss < 0
    s = np.where(ok6, s6, s6 + 3)
    q9, _, doubt9 = _scaled(a, s)
    q = np.where(ok6, q6, q9)
    digits = np.where(ok6, 6, 9)
    carried = q == _POW10[digits]  # 9.9999996 rounds to 10.0000: the exponent goes up
    exp10 = k + carried
    valid = (a > 0) & np.isfinite(a) & (s6 >= 0) & (s <= 22) & (exp10 < digits)
    valid &= ~doubt & ~(doubt9 & ~ok6)
    scientific = valid & (exp10 < -4)
    value = q / _POW10[np.clip(s, 0, 22)]  # correctly rounded: the double nearest to it
    mantissa = q / _POW10[digits - 1 + carried]
    value = np.where(scientific, mantissa, np.where(valid, value, 0.0))
    return np.copysign(value, x), exp10, scientific, valid | (a == 0)


def _splice(text: bytes, ends: np.ndarray, cut: np.ndarray, new: list[bytes]) -> bytes:
    """`text` with the `cut[i]` (at most 4) bytes before offset `ends[i]` replaced by
    `new[i]`; `ends` ascending."""
    buf = np.frombuffer(text, np.uint8)
    keep = np.ones(len(buf), bool)
    for back in range(1, 5):
        keep[(ends - back)[cut >= back]] = False
    lengths = np.fromiter(map(len, new), np.int64, len(new))
    at = np.repeat(ends - np.cumsum(cut), lengths)
    return np.insert(buf[keep], at, np.frombuffer(b"".join(new), np.uint8)).tobytes()


def _number_ends(text: bytes) -> np.ndarray:
    """Offsets just past each number of a dumped non-empty array, in order."""
    buf = np.frombuffer(text, np.uint8)
    closing = (buf[1:] == ord(",")) | (buf[1:] == ord("]"))
    return np.flatnonzero(closing & (buf[:-1] != ord("]"))) + 1


def _floats(array: np.ndarray) -> bytes:
    """A float32 or float64 array (rank >= 1, not empty) as WriteDecimal writes it."""
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        with np.errstate(all="ignore"):  # inf, NaN and zeros are worked on, then left out
            # in blocks whose temporaries stay in the CPU's cache (measured ~1.7x faster)
            parts = [_f32_digits(flat[i : i + _BLOCK]) for i in range(0, len(flat), _BLOCK)]
            value, exp10, scientific, done = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        value = np.zeros(flat.shape)
        exp10 = scientific = done = np.zeros(flat.shape, bool)
    rest = np.flatnonzero(~done)
    sci = np.flatnonzero(scientific)
    if len(rest) + len(sci) <= _FEW:  # written "null" by orjson, then replaced one by one
        patched = np.union1d(rest, sci)
        value[patched] = np.nan
        text = orjson.dumps(value.reshape(array.shape), option=orjson.OPT_SERIALIZE_NUMPY)
        if not len(patched):
            return text
        pieces = text.split(b"null")
        out = [b""] * (2 * len(pieces) - 1)
        out[::2] = pieces
        out[1::2] = [decimal(v, array.dtype) for v in flat[patched].tolist()]
        return b"".join(out)
    value = np.where(done, value, np.nan)
    text = orjson.dumps(value.reshape(array.shape), option=orjson.OPT_SERIALIZE_NUMPY)
    ends = _number_ends(text)
    exps = exp10[sci]
    whole = (value[sci] == np.trunc(value[sci])).astype(np.int64)  # "3.0" -> "3e-05"
    suffix = [b"e%+03d" % v for v in exps.tolist()]
    order = np.argsort(np.concatenate([sci, rest]), kind="stable")
    where = np.concatenate([ends[sci], ends[rest]])[order]
    cut = np.concatenate([2 * whole, np.full(len(rest), 4)])[order]
    new = suffix + [decimal(v, array.dtype) for v in flat[rest].tolist()]
    return _splice(text, where, cut, [new[i] for i in order.tolist()])


def dumps(array) -> bytes:
    """TF Serving's JSON of a numeric or bool array (AddTensorValues): a scalar bare, nested
    lists otherwise; floats by WriteDecimal."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if array.dtype not in _WRITABLE:
        raise UnwritableType(array.dtype)
    if array.ndim == 0:
        return dumps(array.reshape(1))[1:-1]
    if array.ndim >= 2 and array.shape[-1] == 1 and array.size:
        # Wrapping every number of the array without its unit axis in [] adds that axis.
        return b"[" + dumps(array[..., 0]).replace(b",", b"],[") + b"]"
    array = np.ascontiguousarray(array)
    if kind == "f" and array.size:
        return _floats(array)
    return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
