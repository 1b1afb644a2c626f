"""TF Serving's REST predict bodies (util/json_tensor.cc): FillPredictRequestFromJson, row
("instances") and columnar ("inputs") requests into arrays, with its checks in its order
and its error messages; MakeJsonFromTensors, "predictions" / "outputs" back.

A numeric input is read with np.asarray when that gives the array TF Serving would build
(a rectangular array of numbers of the right kind); anything else is walked value by value
as FillTensorProto walks it, which finds TF Serving's error.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from dae.serving.apis.json_numbers import UnwritableType, dumps
from dae.serving.apis.json_parse import debug_string, json_type
from dae.serving.model_server.predict import invalid
from dae.serving.model_server.servable import ServingError, Signature

MAX_RANK = 64  # numpy's most dimensions
_INT_RANGES = {  # IsInt, IsInt64, IsUint, IsUint64 of AddValueToTensor
    **dict.fromkeys(["i1", "i2", "i4", "u1"], (-(2**31), 2**31 - 1)),
    "i8": (-(2**63), 2**63 - 1),
    "u4": (0, 2**32 - 1),
    "u8": (0, 2**64 - 1),
}


def type_name(dtype: np.dtype) -> str:
    """DataTypeString: float, double, string, int32, ..."""
    names = {"f4": "float", "f8": "double", "f2": "half", "O": "string", "b1": "bool"}
    return names.get(dtype.str[1:], dtype.name)


def _add_value(v, dtype: np.dtype):
    """AddValueToTensor (and FillTensorProto's b64 objects): the value, or its error."""
    key = dtype.str[1:]
    if dtype.kind == "O":
        if isinstance(v, str):
            return v.encode("utf-8", "surrogateescape")
        if isinstance(v, dict):
            decoded = b64_value(v)
            if decoded is None:
                raise invalid(
                    f"JSON Value: {debug_string(v)} not formatted correctly for base64 data"
                )
            return decoded
    elif isinstance(v, dict):
        pass
    elif key in ("f4", "f8"):
        if isinstance(v, int | float) and not isinstance(v, bool):
            return v
    elif key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
    elif dtype.kind == "b":
        if isinstance(v, bool):
            return v
    else:
        raise ServingError(
            "UNIMPLEMENTED",
            f"Conversion of JSON Value: {debug_string(v)} to type: {type_name(dtype)}",
        )
    raise invalid(
        f"JSON Value: {debug_string(v)} Type: {json_type(v)} "
        f"is not of expected type: {type_name(dtype)}"
    )


def b64_value(v) -> bytes | None:
    """JsonDecodeBase64Object of an IsValBase64Object value; None for any other value."""
    if not (isinstance(v, dict) and len(v) == 1 and isinstance(v.get("b64"), str)):
        return None
    text = v["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _shape(v) -> list[int]:
    """GetDenseTensorShape: the sizes of the first elements' lists."""
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def _walk(v, level: int, shape: list[int], dtype: np.dtype, out: list) -> None:
    """FillTensorProto."""
    rank = len(shape)
    if not isinstance(v, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {debug_string(v)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_add_value(v, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(v) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(v)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in v:
        _walk(item, level + 1, shape, dtype, out)


def _quick(v, shape: list[int], dtype: np.dtype, raw: bytes) -> np.ndarray | None:
    """The array of a numeric input when np.asarray reads it as FillTensorProto would;
    None when in doubt (the walk decides)."""
    if dtype.kind not in "biuf" or not shape:
        return None
    try:
        arr = np.asarray(v)
    except (ValueError, TypeError, OverflowError):
        return None
    if list(arr.shape) != shape:
        return None
    kind = arr.dtype.kind
    if dtype.kind == "b":
        return arr if kind == "b" else None
    if kind not in "iuf" or (b"true" in raw or b"false" in raw):  # a bool among numbers
        return None
    if dtype.kind == "f":
        return arr.astype(dtype)
    lo, hi = _INT_RANGES.get(dtype.str[1:], (1, 0))
    if kind == "f" or not arr.size or arr.min() < lo or arr.max() > hi:
        return None if arr.size else arr.astype(dtype)
    return arr.astype(dtype)


def tensor(v, dtype: np.dtype, raw: bytes) -> np.ndarray:
    """GetDenseTensorShape + FillTensorProto of one value: its array, or TF Serving's error."""
    shape = _shape(v)
    if len(shape) > MAX_RANK:
        raise invalid(f"JSON Value is nested {len(shape)} lists deep; at most {MAX_RANK} here")
    arr = _quick(v, shape, dtype, raw)
    if arr is not None:
        return arr
    values: list = []
    _walk(v, 0, shape, dtype, values)
    if dtype.kind == "O":
        flat = np.empty(len(values), object)
        flat[:] = values
        return flat.reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def _shape_text(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _instances(rows: list, sig: Signature, raw: bytes) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList."""
    infos = sig.inputs

    def is_object(v):
        return isinstance(v, dict) and b64_value(v) is None

    if not isinstance(rows[0], dict) and len(infos) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = is_object(rows[0])
    if not objects:  # one input: the whole list at once when it is a plain array
        name, info = next(iter(infos.items()))
        if not any(is_object(r) for r in rows):
            arr = _quick(rows, _shape(rows), info.dtype, raw)
            if arr is not None:
                return {name: arr}
    columns: dict[str, list] = {}
    first: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        if objects and not is_object(row):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        if not objects and is_object(row):
            raise invalid(f"Expecting value/list but got object at item {i} of input list")
        for key, value in row.items() if objects else [(next(iter(infos)), row)]:
            where = f"{i} key: {key}" if objects else f"{i}"
            try:
                if key not in infos:
                    raise invalid(f"JSON object: does not have named input: {key}")
                arr = tensor(value, infos[key].dtype, raw)
                if arr.ndim >= MAX_RANK:  # the batch adds a dimension
                    raise invalid(
                        f"JSON Value is nested {arr.ndim + 1} lists deep with the batch; "
                        f"at most {MAX_RANK} here"
                    )
                seen = first.setdefault(key, arr)
                if seen.size != arr.size:
                    raise invalid(f"Expecting tensor size: {seen.size} but got: {arr.size}")
                if seen.shape != arr.shape:
                    raise invalid(
                        f"Expecting shape {_shape_text(seen.shape)} "
                        f"but got: {_shape_text(arr.shape)}"
                    )
            except ServingError as e:
                raise invalid(
                    f"Failed to process element: {where} of 'instances' list. Error: {e.code}: {e}"
                ) from None
            columns.setdefault(key, []).append(arr)
        if objects and set(row) != set(infos):
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{debug_string(row)} keys must be equal to: {','.join(sorted(infos))}"
            )
    return {k: np.stack(v) for k, v in columns.items()}


def _inputs(value, sig: Signature, raw: bytes) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: names the signature does not take are not read."""
    infos = sig.inputs
    if not isinstance(value, dict) or b64_value(value) is not None:
        if len(infos) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name, info = next(iter(infos.items()))
        return {name: tensor(value, info.dtype, raw)}
    out = {}
    for name, info in infos.items():
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        out[name] = tensor(value[name], info.dtype, raw)
    return out


def fill_predict_request(doc: dict, sig: Signature, raw: bytes) -> tuple[dict, bool]:
    """FillPredictRequestFromJson after the signature: ({input: array}, row format?)."""
    if not sig.inputs:
        raise invalid(f"Failed to get input map for signature: {sig.name or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid(
                f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only "
                "one of 'inputs' or 'instances' keys to exist "
            )
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise invalid(
                f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array"
            )
        if not rows:
            raise invalid(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _instances(rows, sig, raw), True
    if "inputs" in doc:
        return _inputs(doc["inputs"], sig, raw), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _value_json(name: str, value: np.ndarray) -> bytes:
    """AddTensorValues: numbers by WriteDecimal, strings as text or {"b64": ...} when the
    name ends in "_bytes" (IsNamedTensorBytes)."""
    import orjson

    value = np.asarray(value)
    if value.dtype.kind not in "OSU":
        try:
            return dumps(value)
        except UnwritableType:
            raise invalid(
                f"Failed to write JSON value for tensor type: {type_name(value.dtype)}"
            ) from None
    if name.endswith("_bytes"):
        convert = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
    else:
        convert = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)  # noqa: E731
    if not value.size:
        return orjson.dumps(np.zeros(value.shape).tolist())
    return orjson.dumps(np.vectorize(convert, otypes=[object])(value).tolist())


def make_json_from_tensors(outputs: dict[str, np.ndarray], row: bool) -> bytes:
    """MakeJsonFromTensors: {"predictions": rows} or {"outputs": tensor(s)}."""
    import orjson

    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    if not row:
        if len(outputs) == 1:
            ((name, value),) = outputs.items()
            return b'{"outputs":' + _value_json(name, value) + b"}"
        members = (orjson.dumps(k) + b":" + _value_json(k, v) for k, v in outputs.items())
        return b'{"outputs":{' + b",".join(members) + b"}}"
    batch = None
    for name, value in outputs.items():
        if np.ndim(value) == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and len(value) != batch:
            raise invalid(
                f"Tensor name: {name} has inconsistent batch size: {len(value)} expecting: {batch}"
            )
        batch = len(value)
    if len(outputs) == 1:
        ((name, value),) = outputs.items()
        return b'{"predictions":' + _value_json(name, value) + b"}"
    keys = {k: orjson.dumps(k) + b":" for k in outputs}
    rows = (
        b"{" + b",".join(keys[k] + _value_json(k, v[i]) for k, v in outputs.items()) + b"}"
        for i in range(batch)
    )
    return b'{"predictions":[' + b",".join(rows) + b"]}"
