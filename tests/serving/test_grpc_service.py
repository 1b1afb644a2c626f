"""The gRPC front end's tensor conversions must be TF's own, byte for byte."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from dae.serving.grpc_service import fill_tensor_proto, to_ndarray

ARRAYS = [
    np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32),
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(6, dtype=np.int64),
    np.arange(8, dtype=np.uint8).reshape(2, 2, 2),
    np.arange(4, dtype=np.int32).reshape(1, 4),
    np.arange(4, dtype=np.float16),
    np.arange(4, dtype=np.uint16),  # tf.make_tensor_proto sends it as int_val
    np.array([True, False]),
    np.float32(2.5),  # a scalar: make_tensor_proto's own encoding
    np.zeros((0, 3), np.float32),
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
]


@pytest.mark.parametrize("value", ARRAYS, ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
def test_fill_tensor_proto_writes_what_make_tensor_proto_writes(value):
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, np.asarray(value))
    assert proto.SerializeToString() == tf.make_tensor_proto(value).SerializeToString()


@pytest.mark.parametrize("value", ARRAYS, ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
def test_to_ndarray_reads_what_make_ndarray_reads(value):
    proto = tf.make_tensor_proto(value)
    got, want = to_ndarray(proto), tf.make_ndarray(proto)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_content_that_does_not_fit_the_shape_is_tf_s_error():
    proto = tf.make_tensor_proto(np.ones((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(ValueError):
        to_ndarray(proto)
