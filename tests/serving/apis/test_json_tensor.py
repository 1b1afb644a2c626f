"""TF Serving's JSON (util/json_tensor.cc, cases of json_tensor_test.cc): numbers written
as WriteDecimal writes them, bodies read as ParseJson reads them, values quoted as
JsonValueToDebugString quotes them; and the tensor fast path takes only what the generic
path would take as the same array."""

import numpy as np
import pytest

from dae.serving.apis import json_tensor
from dae.serving.apis.json_numbers import UnwritableType, decimal
from dae.serving.apis.json_parse import JsonError, debug_string, parse


def _one_by_one(x: np.ndarray) -> bytes:
    """The array written value by value with `decimal`, as AddTensorValues nests them."""
    if x.ndim == 0:
        return decimal(x, x.dtype)
    return b"[" + b",".join(_one_by_one(v) for v in x) + b"]"


@pytest.mark.parametrize("shape", [(3,), (2, 3), (4, 28, 28, 1), (2, 1), (1, 1, 1), (2, 3, 1, 1)])
def test_dumps_writes_write_decimal_and_loads_round_trips(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    text = json_tensor.dumps(x)
    assert text == _one_by_one(x)
    key, array, signature = json_tensor.loads(b'{"inputs":' + text + b"}", ("inputs",))
    assert (key, signature, array.shape) == ("inputs", None, shape)
    np.testing.assert_array_equal(array.astype(np.float32), x)


@pytest.mark.parametrize(
    "body",
    [
        b'{"signature_name": "x[,]", "inputs": [[1, 2], [3, 4]]}',
        b'{ "inputs" : [ [1, 2.0] , [3 , 4e0] ] , "signature_name":"s" }',
    ],
)
def test_loads_ignores_layout_and_strings(body):
    _, array, signature = json_tensor.loads(body, ("instances", "inputs"))
    np.testing.assert_array_equal(array, [[1, 2], [3, 4]])
    assert signature in ("x[,]", "s")


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [[1, 2], [3, 4, 5], [6]]}',  # ragged, as many numbers as [3, 2]
        b'{"inputs": [[1, 2], [3]]}',
        b'{"inputs": [[1, 2], [[3], 4]]}',
        b'{"inputs": [[1, 2], ["a", 3]]}',
        b'{"inputs": [true]}',
        b'{"inputs": [1e400]}',
        b'{"inputs": []}',
        b'{"inputs": 1}',
        b'{"inputs": [1], "instances": [2]}',
        b'{"inputs": [1], "extra": 1}',
        b'{"signature_name": 3, "inputs": [1]}',
        b'{"signature_name": "a\\"b", "inputs": [1]}',
        b"[1, 2]",
        b"{not json",
    ],
)
def test_loads_leaves_anything_else_to_the_generic_path(body):
    assert json_tensor.loads(body, ("instances", "inputs")) is None


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        # FromJsonSingleFloatTensorSixDigitPrecision: StrCat's six digits, '.0' when whole
        ([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5], np.float32,
         b"[9e+06,999999.0,0.5,0.0003,3e-05,555557.5]"),
        # FromJsonSingleFloatTensorNonFinite
        ([np.nan, np.inf, 3, -np.inf], np.float32, b"[NaN,Infinity,3.0,-Infinity]"),
        # six digits that do not read back as the float: max_digits10 (9) digits
        ([2.000001, 0.1, 1 / 3, 1e-7, -1.5e-9, 123456789], np.float32,
         b"[2.00000095,0.1,0.333333343,1e-07,-1.5e-09,123456792.0]"),
        ([0.0, -0.0, 1e-45, 3.4028235e38, 9.99999974737875e-05], np.float32,
         b"[0.0,-0.0,1.4013e-45,3.40282347e+38,0.0001]"),
        # doubles: six digits, else 17 (max_digits10 of a double)
        ([8.0, 0.1, 1 / 3, 1e100, np.nan], np.float64,
         b"[8.0,0.1,0.33333333333333331,1e+100,NaN]"),
        ([1, -2, 3], np.int32, b"[1,-2,3]"),
        ([True, False], np.bool_, b"[true,false]"),
    ],
)  # fmt: skip
def test_numbers_are_written_as_write_decimal_writes_them(values, dtype, expected):
    x = np.array(values, dtype)
    assert json_tensor.dumps(x) == expected
    if x.dtype.kind == "f":
        assert _one_by_one(x) == expected


def test_a_scalar_is_written_bare():
    """AddTensorValues: "Scalar values dont need to be enclosed in an array"."""
    assert json_tensor.dumps(np.float32(2.5)) == b"2.5"
    assert json_tensor.dumps(np.array(9e6, np.float32)) == b"9e+06"
    assert json_tensor.dumps(np.int64(7)) == b"7"


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6, 1e-12, 1e4, 1e7, 1e30])
def test_every_float32_is_written_as_one_by_one(scale):
    """The array writer (decimal digits in float64, scientific exponents spliced in)
    against the value-by-value WriteDecimal, on float32s of every kind."""
    rng = np.random.default_rng(int(np.log10(scale)) + 40)
    x = (rng.standard_normal(3000) * scale).astype(np.float32)
    bits = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for array in (x, bits, x.reshape(30, 100, 1), x[:40], x[:300].astype(np.float64)):
        assert json_tensor.dumps(array) == _one_by_one(array)


def test_types_tf_serving_cannot_write_are_refused():
    """AddSingleValueAndAdvance has no case for half, uint16, complex."""
    for dtype in (np.float16, np.uint16, np.complex64):
        with pytest.raises(UnwritableType):
            json_tensor.dumps(np.zeros(2, dtype))


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"instances": [NaN, Infinity, -Infinity]}', [np.nan, np.inf, -np.inf]),
        (b'{"instances": [1.0, 2]}  {"ignored": ', [1.0, 2]),  # kParseStopWhenDoneFlag
        (b'\n {"instances": [1e308]}', [1e308]),
    ],
)
def test_parse_takes_what_rapidjson_takes(raw, expected):
    np.testing.assert_array_equal(parse(raw)["instances"], expected)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"  ", "JSON Parse error: The document is empty. at offset: 2"),
        (b'{"instances": [1,', "JSON Parse error: Invalid value. at offset: 17"),
        (b'{"a": [1, 2',
         "JSON Parse error: Missing a comma or ']' after an array element. at offset: 11"),
        (b'{"a": 1 "b": 2}',
         "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
        (b'{"a" 1}',
         "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        (b"{1: 2}", "JSON Parse error: Missing a name for object member. at offset: 1"),
        (b'{"a": "x', "JSON Parse error: Missing a closing quotation mark in string. at offset: 8"),
        (b"[1.]", "JSON Parse error: Miss fraction part in number. at offset: 3"),
        (b"[1e+]", "JSON Parse error: Miss exponent in number. at offset: 4"),
        (b"[1e400]", "JSON Parse error: Number too big to be stored in double. at offset: 1"),
        (b'{"\xc3\xa9": [x]}', "JSON Parse error: Invalid value. at offset: 8"),  # bytes
    ],
)  # fmt: skip
def test_parse_errors_are_rapidjsons(raw, message):
    with pytest.raises(JsonError) as e:
        parse(raw)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"instances": []}, '{\n    "instances": []\n}'),
        ({"a": [1, 2.0, "x"], "b": {"c": None}},
         '{\n    "a": [1, 2.0, "x"],\n    "b": {\n        "c": null\n    }\n}'),
        ([{"a": True}], '[{\n        "a": true\n    }]'),
        ([1e21, 1e-7, 0.001, 100.0, -0.0], "[1e21, 1e-7, 0.001, 100.0, -0.0]"),
        ('a"\n\x01', '"a\\"\\n\\u0001"'),
        ([1.0, float("nan"), 2.0], "[1.0, "),  # rapidjson's writer stops at a NaN
        (list(range(200)), "[" + ", ".join(map(str, range(67)))),  # none starts past 256 bytes
    ],
)  # fmt: skip
def test_debug_string_is_rapidjsons_pretty_writer(value, expected):
    assert debug_string(value) == expected
