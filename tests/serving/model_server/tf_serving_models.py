"""TF Serving's test models, made here in a temp dir: half_plus_two / half_plus_three as
TF Serving's own generator builds them (a TF1 graph with predict, classify and regress
SignatureDefs; tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py),
and a native TF2 equivalent. `y = a*x + b`, `y2 = a*x + c`, `y3 = a*x2 + c`. Also dae serve's
front ends in-process over servables loaded by a test (`OneModel`, `Front`)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import httpx
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from dae.serving.model_server.grpc_service import make_server
from dae.serving.model_server.predict import Limits, Predictor
from dae.serving.model_server.rest import make_app
from dae.serving.model_server.servable import ServingError

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def example(**features) -> bytes:
    """A serialized tf.Example of float features: example(x=2.0)."""
    feats = {
        k: tf.train.Feature(float_list=tf.train.FloatList(value=list(v) if _seq(v) else [v]))
        for k, v in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _seq(v) -> bool:
    return isinstance(v, list | tuple)


def _feature_spec(v1):
    return {
        "x": v1.FixedLenFeature([1], dtype=tf.float32),
        "x2": v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
    }


def half_plus_two_tf1(
    base: Path,
    a: float = 0.5,
    b: float = 2.0,
    c: float = 3.0,
    version: str = "00000123",
    legacy: bool = False,
) -> Path:
    """TF Serving's saved_model_half_plus_two (TF1, tf.compat.v1 SavedModelBuilder) at
    `base/version`; its path. Signatures: serving_default (predict x -> y, both [-1, 1]),
    classify_x_to_y (serialized Examples -> scores), regress_x_to_y, regress_x_to_y2,
    regress_x2_to_y3 (float x2 input -> outputs). `legacy`: the SignatureDefs as TF 1.0
    wrote them in TF Serving's saved_model_half_plus_three: no tensor shapes, and the
    serialized-Example input declared DT_FLOAT."""
    v1 = tf.compat.v1
    path = Path(base) / version
    info = v1.saved_model.utils.build_tensor_info
    build = v1.saved_model.signature_def_utils.build_signature_def

    def signature(method, **tensors):
        ins = {k[3:]: info(t) for k, t in tensors.items() if k.startswith("in_")}
        outs = {k[4:]: info(t) for k, t in tensors.items() if k.startswith("out_")}
        return build(ins, outs, method)

    with tf.Graph().as_default(), v1.Session() as sess:
        va, vb, vc = v1.Variable(a, name="a"), v1.Variable(b, name="b"), v1.Variable(c, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = v1.parse_example(serialized, _feature_spec(v1))
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(va * x + vb, name="y")
        y2 = tf.identity(va * x + vc, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        y3 = tf.identity(va * x2 + vc, name="y3")
        signatures = {
            "serving_default": signature(PREDICT, in_x=x, out_y=y),
            "classify_x_to_y": signature(CLASSIFY, in_inputs=serialized, out_scores=y),
            "regress_x_to_y": signature(REGRESS, in_inputs=serialized, out_outputs=y),
            "regress_x_to_y2": signature(REGRESS, in_inputs=serialized, out_outputs=y2),
            "regress_x2_to_y3": signature(REGRESS, in_inputs=x2, out_outputs=y3),
        }
        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()
    if legacy:
        _strip_signature_shapes(path / "saved_model.pb")
    return path


def _strip_signature_shapes(pb: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for sd in proto.meta_graphs[0].signature_def.values():
        for info in [*sd.inputs.values(), *sd.outputs.values()]:
            info.ClearField("tensor_shape")
            if info.dtype == tf.string.as_datatype_enum:
                info.dtype = tf.float32.as_datatype_enum
    pb.write_bytes(proto.SerializeToString())


def half_plus_three_tf1(base: Path, version: str = "00000123") -> Path:
    """TF Serving's saved_model_half_plus_three: y = 0.5 x + 3 (y2 = 0.5 x + 4), with its
    TF 1.0 SignatureDefs (`legacy`), which tf.saved_model.load cannot load."""
    return half_plus_two_tf1(base, a=0.5, b=3.0, c=4.0, version=version, legacy=True)


class _HalfPlusTwo(tf.Module):
    """TF Serving's native TF2 half_plus_two (HalfPlusTwoModel in its generator)."""

    def __init__(self, a: float, b: float, c: float):
        super().__init__()
        self.a, self.b, self.c = tf.Variable(a), tf.Variable(b), tf.Variable(c)

    def _x(self, serialized):
        return tf.io.parse_example(serialized, _feature_spec(tf.io))["x"]

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy2(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.c}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_xy(self, inputs):
        return {"scores": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_classes(self, inputs):
        """Not in TF Serving's model: a classifier with both outputs, 2 classes per example."""
        score = self.a * self._x(inputs) + self.b
        n = tf.shape(score)[0]
        classes = tf.tile(tf.constant([["lo", "hi"]]), [n, 1])
        return {"classes": classes, "scores": tf.concat([1.0 - score, score], axis=1)}


def half_plus_two_tf2(
    base: Path, a: float = 0.5, b: float = 2.0, c: float = 3.0, version: str = "00000123"
) -> Path:
    """A native TF2 half_plus_two (tf.saved_model.save) at `base/version`; its path. Its
    SignatureDefs all say method predict (TF2 cannot record another), as TF Serving's TF2
    model: serving_default (x [1] -> y), regress_x_to_y, regress_x_to_y2, classify_x_to_y,
    and classify_with_classes (classes ["lo", "hi"], scores [1 - y, y])."""
    path = Path(base) / version
    m = _HalfPlusTwo(a, b, c)
    signatures = {
        "serving_default": m.predict,
        "regress_x_to_y": m.regress_xy,
        "regress_x_to_y2": m.regress_xy2,
        "classify_x_to_y": m.classify_xy,
        "classify_with_classes": m.classify_classes,
    }
    tf.saved_model.save(m, str(path), signatures=signatures)
    return path


class _AnyRank(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def double(self, x):
        return {"y": 2.0 * x}


def unknown_rank_tf2(base: Path, version: str = "1") -> Path:
    """A TF2 model whose serving_default takes x of unknown rank (y = 2 x): a scalar, a
    vector, anything."""
    path = Path(base) / version
    m = _AnyRank()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.double})
    return path


# -- in-process front ends over loaded servables --------------------------------------


class OneModel(Predictor):
    """A Predictor over servables loaded by the test, by model name: no manager, no
    polling. `method_name_check`: --enable_signature_method_name_check."""

    def __init__(self, servables: dict, max_rows: int = 1024):
        super().__init__(None, None, Limits(max_rows=max_rows))
        self.servables = servables
        self.method_name_check = False

    def servable(self, model, version, label=None):
        found = self.servables.get(model)
        if found is None or version not in (None, found.version):
            raise ServingError("NOT_FOUND", f"Servable not found for request: {model}")
        return found


class Front:
    """dae serve's gRPC server and REST app over `predictor`, in this process: an event
    loop in a thread; `stub` (PredictionService) and `post` talk to them."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server, port = self.call(self._start(predictor))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.app = make_app(predictor, 1 << 20)

    async def _start(self, predictor):
        server, port = make_server(predictor, "127.0.0.1:0", 1 << 20)
        await server.start()
        return server, port

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def post(self, path: str, body) -> httpx.Response:
        async def go():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                if isinstance(body, bytes):
                    return await client.post(path, content=body)
                return await client.post(path, json=body)

        return self.call(go())

    def close(self):
        self.channel.close()
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
