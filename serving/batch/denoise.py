"""Denoise a batch of images with a SavedModel (an Apache Beam pipeline with RunInference)
or a TF Serving endpoint (gRPC, or REST with --rest).

SRC: a folder of PNGs, a .npy file (uint8 0..255 or float in [0, 1]; [N,H,W] or [N,H,W,C]),
a TFRecord file of dae's examples (`noisy`, else `image`; shape from the schema.json beside
it or --shape), or tfds:NAME/SPLIT (the `image` feature of a prepared dataset; never
downloads). DST: a folder of 8-bit PNGs (no suffix, or ending in /) keeping the input's file
names (00000.png... for nameless inputs), or a .npy file of float32 [N,H,W,C] in [0, 1] with
the written images in input order.

Bad images (unreadable, not the model's input shape, NaN or out-of-range values): with
--on-error skip (the default) each is named on stderr, left out of the output and counted in
the summary; with --on-error stop the first one fails the job. A failed job writes nothing:
DST appears only when complete. An existing DST (a non-empty folder, or a .npy) is refused
unless --overwrite. Progress goes to stderr (drawn when it is a terminal); one summary line,
to stdout: images in, written, skipped, seconds, images/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_BATCH_SIZE = 64
METADATA_TIMEOUT_S = 10.0


class BatchError(Exception):
    """Bad input or output for a batch job; one line for the user."""


def add_arguments(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--input",
        required=True,
        metavar="SRC",
        help="PNG folder, .npy, .tfrecord or tfds:NAME/SPLIT",
    )
    p.add_argument("--output", required=True, metavar="DST", help="PNG folder or .npy file")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="SavedModel version folder, or a base path "
        "(its latest integer version): run it here in a Beam pipeline",
    )
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="send batches to this TF Serving "
        "endpoint (gRPC, or its Unix socket unix:PATH; REST with --rest); give --model or "
        "--server",
    )
    p.add_argument("--rest", action="store_true", help="--server is TF Serving's REST port")
    p.add_argument("--model-name", default="denoiser", help="served model name (default denoiser)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per model call (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--on-error",
        choices=["skip", "stop"],
        default="skip",
        help="an unreadable or wrongly shaped image: skip reports it on stderr, leaves it out and "
        "counts it (default); stop fails the job on the first one, writing nothing",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--shape", metavar="H,W,C", help="TFRecord input: overrides its schema.json")
    p.add_argument(
        "--data-dir",
        default="~/tensorflow_datasets",
        help="TFDS data_dir for tfds: input (default ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--runner",
        help="--model: Beam runner (default DirectRunner, as its "
        "in-process FnApiRunner: no attempt to fetch the Prism runner)",
    )
    p.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="FLAG",
        help="--model: a Beam pipeline option, repeatable; write it with '=', e.g. "
        "--beam-option=--direct_num_workers=2",
    )


# ---- the model's input shape -----------------------------------------------------------


def _signature_shape(sig_def, where: str) -> tuple:
    """HWC from a SignatureDef proto of TF Serving's denoiser signature (None: any size)."""
    from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME

    if INPUT_NAME not in sig_def.inputs or OUTPUT_NAME not in sig_def.outputs:
        raise BatchError(
            f"{where}: signature takes {list(sig_def.inputs)} and returns "
            f"{list(sig_def.outputs)}, not '{INPUT_NAME}' -> '{OUTPUT_NAME}'"
        )
    shape = sig_def.inputs[INPUT_NAME].tensor_shape
    if shape.unknown_rank:
        return (None, None, None)
    dims = [None if d.size < 0 else int(d.size) for d in shape.dim]
    if len(dims) != 4:
        raise BatchError(f"{where}: input '{INPUT_NAME}' has rank {len(dims)}, not [N,H,W,C]")
    return tuple(dims[1:])


def resolve_model(spec: str) -> Path:
    """A SavedModel folder, or the latest integer version holding one under a base path."""
    from dae.serving.format.export import version_dirs

    path = Path(spec).expanduser()
    if not path.is_dir():
        raise BatchError(f"--model {path} does not exist")
    if (path / "saved_model.pb").is_file():
        return path
    found = [d for d in version_dirs(path).values() if (d / "saved_model.pb").is_file()]
    if not found:
        raise BatchError(
            f"no SavedModel in {path} (no saved_model.pb in it or in an integer version folder)"
        )
    return found[-1]


def saved_model_shape(model_dir: Path) -> tuple:
    """Load the SavedModel (so a broken one fails here, in one line, not in a Beam worker)
    and read its serving signature's input shape, HWC (None: any size)."""
    import tensorflow as tf

    from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except Exception as e:  # TF says "broken" in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BatchError(f"cannot load the SavedModel in {model_dir}: {first}") from None
    if SIGNATURE not in loaded.signatures:
        raise BatchError(f"the SavedModel in {model_dir} has no '{SIGNATURE}' signature")
    fn = loaded.signatures[SIGNATURE]
    inputs, outputs = fn.structured_input_signature[1], fn.structured_outputs
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise BatchError(
            f"SavedModel {model_dir}: '{SIGNATURE}' takes {list(inputs)} and returns "
            f"{list(outputs)}, not '{INPUT_NAME}' -> '{OUTPUT_NAME}'"
        )
    shape = inputs[INPUT_NAME].shape
    if shape.rank is None:
        return (None, None, None)
    if shape.rank != 4:
        raise BatchError(f"SavedModel {model_dir}: input '{INPUT_NAME}' is not [N,H,W,C]")
    return tuple(shape.as_list()[1:])


def server_shape(client, args) -> tuple:
    """Ask the endpoint for the model's signature; the first contact, so it also says
    whether the server is there at all."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import meta_graph_pb2

    from dae.serving.format.export import SIGNATURE

    where = f"{'REST' if args.rest else 'gRPC'} endpoint {args.server}"
    if args.rest:
        import httpx

        try:
            r = client.http.get(
                f"/v1/models/{args.model_name}/metadata", timeout=METADATA_TIMEOUT_S
            )
        except httpx.HTTPError as e:
            raise BatchError(f"cannot reach the {where}: {e or type(e).__name__}") from None
        if r.status_code == 404:
            raise BatchError(f"the {where} serves no model '{args.model_name}'")
        if r.status_code != 200:
            raise BatchError(f"the {where} answered {r.status_code}: {r.text[:200]}")
        try:
            sigs = r.json()["metadata"]["signature_def"]["signature_def"]
        except (ValueError, KeyError, TypeError):
            raise BatchError(f"the {where} sent metadata without a signature_def") from None
        if SIGNATURE not in sigs:
            raise BatchError(f"model '{args.model_name}' at the {where} has no '{SIGNATURE}'")
        sig = json_format.ParseDict(
            sigs[SIGNATURE], meta_graph_pb2.SignatureDef(), ignore_unknown_fields=True
        )
        return _signature_shape(sig, f"model '{args.model_name}' at the {where}")

    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = args.model_name
    try:
        resp = client.stub.GetModelMetadata(req, timeout=METADATA_TIMEOUT_S)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BatchError(f"cannot reach the {where}: {e.details()}") from None
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise BatchError(f"the {where} serves no model '{args.model_name}'") from None
        raise BatchError(f"the {where} refused: {e.code().name}: {e.details()}") from None
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigmap)
    if SIGNATURE not in sigmap.signature_def:
        raise BatchError(f"model '{args.model_name}' at the {where} has no '{SIGNATURE}'")
    return _signature_shape(sigmap.signature_def[SIGNATURE], f"the {where}")


# ---- the job ---------------------------------------------------------------------------


def _bar(desc: str, total):
    from tqdm import tqdm

    # disable=None: drawn when stderr is a terminal, silent in logs and pipes.
    return tqdm(desc=desc, total=total, unit="img", file=sys.stderr, disable=None, leave=False)


class _Tally:
    def __init__(self, on_error: str, bar):
        self.on_error, self.bar = on_error, bar
        self.seen = self.skipped = self.written = 0

    def usable(self, items, want):
        """The images that fit the model, as (index, name, float32 HWC); the others reported
        and skipped, or the job stopped. A free dimension is fixed by the first image."""
        from dae.serving.batch.sources import prepare

        for item in items:
            self.seen += 1
            self.bar.update(1)
            x, why = (None, item.error) if item.error else prepare(item.image, want)
            if x is None:
                if self.on_error == "stop":
                    raise BatchError(f"{item.label}: {why} (--on-error stop)")
                self.skipped += 1
                self.bar.write(f"dae: skipped {item.label}: {why}", file=sys.stderr)
                continue
            want = x.shape
            yield item.index, item.name, x


def _run_beam(args, source, want, dest, tally, model_dir, options) -> None:
    import numpy as np

    with _bar("reading", source.count) as bar:
        tally.bar = bar
        good = list(tally.usable(source.items(), want))
    if not good:
        return
    names = [name for _, name, _ in good]
    images = np.stack([x for _, _, x in good])
    del good
    with _bar("denoising", len(images)) as bar:
        from dae.serving.batch.beam import beam_denoise

        out = beam_denoise(images, model_dir, args.batch_size, options, bar.update)
    with _bar("writing", len(names)) as bar:
        for name, y in zip(names, out, strict=True):
            dest.write(name, y)
            tally.written += 1
            bar.update(1)


def _run_server(args, source, want, dest, tally, client) -> None:
    import numpy as np

    from dae.serving.apis.client import ServingClientError

    def send(batch):
        try:
            denoised = client.predict(np.stack([x for _, x in batch]))
        except ServingClientError as e:
            raise BatchError(f"the server refused a batch: {e}") from None
        except Exception as e:  # transport errors (OSError, http.client's): the server went away
            raise BatchError(f"lost the server at {args.server}: {e}") from None
        if denoised.shape != (len(batch), *batch[0][1].shape):
            raise BatchError(f"the server answered shape {denoised.shape} for {len(batch)} images")
        for (name, _), y in zip(batch, denoised, strict=True):
            dest.write(name, y)
            tally.written += 1

    with _bar("denoising", source.count) as bar:
        tally.bar = bar
        batch = []
        for _, name, x in tally.usable(source.items(), want):
            batch.append((name, x))
            if len(batch) == args.batch_size:
                send(batch)
                batch = []
        if batch:
            send(batch)


def _resolved(given: str, what: str) -> Path:
    try:
        return Path(given).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # Python 3.11: RuntimeError("Symlink loop from ...")
        reason = "is a symlink loop" if "loop" in str(e).lower() else f"cannot be resolved: {e}"
        raise BatchError(f"--{what} {given} {reason}") from None


def _check_paths(args) -> None:
    """The output never replaces what the job reads; a server address is HOST:PORT, a URL,
    or (gRPC) a Unix socket as `dae serve --grpc_socket_path` prints it: unix:PATH."""
    out = _resolved(args.output, "output")
    for what, given in (("input", args.input), ("model", args.model)):
        if given and not given.startswith("tfds:"):
            read = _resolved(given, what)
            if read == out or out in read.parents:
                raise BatchError(f"--output {args.output} would replace the {what} {given}")
    if args.server and args.server.startswith("unix:"):
        if args.rest:
            raise BatchError(f"--server {args.server} is a gRPC socket: --rest needs HOST:PORT")
    elif args.server and "://" not in args.server:
        host, _, port = args.server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BatchError(f"--server must be HOST:PORT, got '{args.server}'")


def main(args) -> int:
    from dae.serving.batch import destinations, sources

    start = time.perf_counter()
    if bool(args.model) == bool(args.server):
        raise BatchError(
            "give one of --model DIR (run a SavedModel here, with Beam) or "
            "--server HOST:PORT (a TF Serving endpoint)"
        )
    if args.rest and not args.server:
        raise BatchError("--rest goes with --server")
    if args.server and (args.runner or args.beam_option):
        raise BatchError("--runner and --beam-option go with --model (a Beam pipeline)")
    if args.batch_size < 1:
        raise BatchError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_paths(args)
    try:
        shape = sources.parse_shape(args.shape) if args.shape else None
        dest = destinations.open_destination(args.output, args.overwrite)
        source = sources.open_source(args.input, shape, args.data_dir)
    except sources.SourceError as e:
        raise BatchError(str(e)) from None

    client = model_dir = options = None
    if args.model:
        model_dir = resolve_model(args.model)
        want = saved_model_shape(model_dir)
        from dae.beam import beam_options

        try:
            options = beam_options(args.runner, args.beam_option)
        except ValueError as e:
            raise BatchError(str(e)) from None
    else:
        from dae.serving.apis.client import connect

        client = connect(args.server, args.model_name, args.rest)
        want = server_shape(client, args)
    if source.shape is not None and (bad := sources.shape_mismatch(source.shape, want)):
        raise BatchError(f"images of {source.description}: {bad}")
    try:
        if want[-1] is not None:
            dest.check_channels(want[-1])
    except sources.SourceError as e:
        raise BatchError(str(e)) from None

    tally = _Tally(args.on_error, None)
    try:
        if args.model:
            _run_beam(args, source, want, dest, tally, model_dir, options)
        else:
            _run_server(args, source, want, dest, tally, client)
        if tally.seen == 0:
            raise BatchError(f"no images in {source.description}")
        if tally.written == 0:
            raise BatchError(f"none of the {tally.seen} images could be used (all skipped)")
        dest.commit()
    except sources.SourceError as e:
        dest.abort()
        raise BatchError(str(e)) from None
    except BaseException:
        dest.abort()
        raise
    finally:
        if client is not None:
            client.close()

    seconds = time.perf_counter() - start
    if tally.skipped:
        print(f"dae: skipped {tally.skipped} of {tally.seen} images", file=sys.stderr)
    print(
        f"denoised {tally.seen} images in, {tally.written} written, {tally.skipped} skipped, "
        f"{seconds:.1f} s, {tally.written / seconds:.1f} images/s -> {dest.path}"
    )
    return 0
