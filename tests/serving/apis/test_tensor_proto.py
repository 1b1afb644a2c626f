"""The gRPC front end's tensor conversions: what TF and TF Serving read and write."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from dae.serving.apis.tensor_proto import fill_tensor_proto, to_ndarray

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


FIELDS = [
    "float_val",
    "double_val",
    "int64_val",
    "int_val",
    "int_val",
    "half_val",
    "int_val",
    "bool_val",
    "float_val",
    None,
    "float_val",
]


@pytest.mark.parametrize(
    "value, field", zip(ARRAYS, FIELDS, strict=True), ids=lambda a: f"{np.asarray(a).dtype}"
)
def test_fill_tensor_proto_writes_typed_fields_as_tf_serving(value, field):
    """TF Serving answers with Tensor::AsProtoField: clients may read float_val directly."""
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, np.asarray(value))
    got = tf.make_ndarray(proto)
    assert got.dtype == np.asarray(value).dtype and got.shape == np.shape(value)
    np.testing.assert_array_equal(got, value)
    assert proto.tensor_content == b"" and proto.dtype == tf.make_tensor_proto(value).dtype
    if field:
        assert len(getattr(proto, field)) == np.size(value)
    if field == "float_val":  # the packed bytes are what protobuf itself writes
        plain = tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
        plain.float_val.extend(np.ravel(value).tolist())
        assert proto.SerializeToString() == plain.SerializeToString()


def test_strings_go_in_string_val():
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, np.array([b"a", "b"], dtype=object))
    assert list(proto.string_val) == [b"a", b"b"]
    assert tf.make_ndarray(proto).tolist() == [b"a", b"b"]


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_ndarray_reads_tf_servings_typed_fields_from_their_bytes(dtype):
    """What TF Serving (and dae) answer: packed float_val / double_val, read without a
    Python float per value; a short field (one value broadcast) takes tf.make_ndarray's path."""
    value = np.random.default_rng(1).random((3, 5, 2)).astype(dtype)
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, value)
    got = to_ndarray(proto)
    assert got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    short = tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
    (short.float_val if dtype == np.float32 else short.double_val).append(0.5)
    np.testing.assert_array_equal(to_ndarray(short), tf.make_ndarray(short))
