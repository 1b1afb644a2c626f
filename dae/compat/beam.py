"""Apache Beam: its in-process FnApiRunner without the Prism attempt."""

from __future__ import annotations

import inspect

from dae.compat.checks import _attr, _fail, _module


def beam_fn_api_runner(options):
    """What Beam's DirectRunner runs a batch pipeline with, its in-process FnApiRunner, set
    up the way DirectRunner.run_pipeline does it (the pipeline options in its provision
    info), built from Beam's internals: in Beam 2.77 DirectRunner itself first tries the
    Prism runner, which downloads a binary from GitHub (offline: a failed attempt on every
    run, then the fallback). A new runner on every call; nothing is patched."""
    lib, patch = "apache_beam", "beam_fn_api_runner"
    fn_runner = _module(lib, patch, "apache_beam.runners.portability.fn_api_runner.fn_runner")
    runner_cls = _attr(lib, patch, fn_runner, "FnApiRunner")
    extended = _attr(lib, patch, fn_runner, "ExtendedProvisionInfo")
    portable = _module(lib, patch, "apache_beam.runners.portability.portable_runner")
    handle = _attr(lib, patch, portable, "JobServiceHandle")
    encode = _attr(lib, patch, handle, "encode_pipeline_options", ("all_options",))
    api = _module(lib, patch, "apache_beam.portability.api")  # its pb2 are attributes only
    provision = _attr(lib, patch, api, "beam_provision_api_pb2")
    info_cls = _attr(lib, patch, provision, "ProvisionInfo")
    for fn in (runner_cls, extended):
        if "provision_info" not in inspect.signature(fn).parameters:
            _fail(lib, patch, f"{fn.__module__}.{fn.__qualname__}", "takes no provision_info")
    if "pipeline_options" not in info_cls.DESCRIPTOR.fields_by_name:
        _fail(lib, patch, "ProvisionInfo.pipeline_options")
    info = info_cls(pipeline_options=encode(options.get_all_options()))
    return runner_cls(provision_info=extended(info))
