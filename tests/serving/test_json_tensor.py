"""The tensor fast path must write what orjson writes and take only what the generic path
would take as the same array."""

import numpy as np
import orjson
import pytest

from dae.serving.apis import json_tensor


@pytest.mark.parametrize("shape", [(3,), (2, 3), (4, 28, 28, 1), (2, 1), (1, 1, 1), (2, 3, 1, 1)])
def test_dumps_is_orjson_and_loads_round_trips(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    text = json_tensor.dumps(x)
    assert text == orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)
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
