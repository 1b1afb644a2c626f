"""Apache Beam set up the same way for every dae pipeline (transform, batch denoising):
options checked up front, Beam's irrelevant warnings quiet, and no runner that downloads.
"""

from __future__ import annotations

import logging

from dae import compat


class _QuietBeam(logging.Filter):
    """Two warnings of Beam's that don't apply here, on the root logger: importing Beam says
    BigQuery's optional client is missing (we use no GCP); RunInference says it cannot read
    memory use, because its `import resource` shares a try with a torch import (no torch)."""

    NOISE = ("apitools not found", "Resource module is not available")

    def filter(self, record):
        return not record.getMessage().startswith(self.NOISE)


def import_beam():
    root = logging.getLogger()
    if not any(isinstance(f, _QuietBeam) for f in root.filters):
        root.addFilter(_QuietBeam())
    import apache_beam

    return apache_beam


def beam_options(runner: str | None, flags: list[str]):
    """PipelineOptions from a runner name and flags; an unknown flag or runner is a
    ValueError, not a silently ignored typo. DirectRunner's workers (--direct_num_workers
    other than 1) run as threads unless --direct_running_mode says otherwise: its default
    mode, in_memory, has a single worker (Beam only warns that the count has no effect)."""
    import_beam()
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
    from apache_beam.runners.runner import create_runner

    options = PipelineOptions(flags=list(flags), **({"runner": runner} if runner else {}))
    known = options.get_all_options(drop_default=True)
    unknown = set(options.get_all_options(drop_default=True, retain_unknown_options=True))
    if unknown - set(known):
        raise ValueError(
            f"unknown Beam pipeline option(s): {', '.join(sorted(unknown - set(known)))}"
        )
    name = known.get("runner") or "DirectRunner"
    try:
        create_runner(name)
    except (ValueError, ImportError):
        raise ValueError(f"unknown Beam runner '{name}' (or its package is missing)") from None
    direct = options.view_as(DirectOptions)
    if name == "DirectRunner" and direct.direct_num_workers != 1:
        if not any(flag.startswith("--direct_running_mode") for flag in flags):
            direct.direct_running_mode = "multi_threading"
        elif direct.direct_running_mode == "in_memory":
            raise ValueError(
                f"--direct_num_workers={direct.direct_num_workers} needs --direct_running_mode "
                "multi_threading or multi_processing (in_memory runs one worker)"
            )
    return options


def pipeline_runner(options):
    """The runner for `options`: the one named, or for DirectRunner (the default) what Beam's
    DirectRunner runs a batch pipeline with, its in-process FnApiRunner, set up the way it does.
    Not DirectRunner itself: in Beam 2.77 it first tries the Prism runner, which downloads a
    binary from GitHub (offline: a failed attempt on every run, then the fallback)."""
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if name not in (None, "DirectRunner"):
        return None  # beam.Pipeline creates it by name
    return compat.beam_fn_api_runner(options)
