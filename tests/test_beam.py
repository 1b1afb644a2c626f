"""dae.beam: Beam options as the README writes them take effect, without Beam's warnings."""

from __future__ import annotations

import logging
import threading

import pytest

from dae.beam import beam_options, import_beam, pipeline_runner
from dae.components import transform

_THREADS: set[int] = set()


def _record_thread(x):
    _THREADS.add(threading.get_ident())
    return x


def _run(flags):
    beam = import_beam()
    options = beam_options(None, flags)
    _THREADS.clear()
    with beam.Pipeline(runner=pipeline_runner(options), options=options) as p:
        _ = p | beam.Create(range(64)) | beam.Reshuffle() | beam.Map(_record_thread)
    return set(_THREADS)


def test_direct_num_workers_gives_workers(caplog):
    caplog.set_level(logging.WARNING)
    assert _run([]) == {threading.get_ident()}  # in_memory: the caller's thread
    threads = _run(["--direct_num_workers=2"])
    assert threads and threading.get_ident() not in threads  # the workers' threads
    assert [r.getMessage() for r in caplog.records] == []


def test_the_readme_option_in_a_transform_is_quiet(tiny_examples, make_ctx, config, caplog):
    caplog.set_level(logging.WARNING)
    config.beam.options = ["--direct_num_workers=2"]  # --set beam.options='[...]'
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs, config)
    transform.run(ctx)
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        ["--direct_num_workers=1"],
        ["--direct_running_mode=in_memory"],
    ],
)
def test_a_running_mode_given_is_kept(flags):
    mode = flags[-1].partition("=")[2] if "mode" in flags[-1] else "in_memory"
    assert beam_options(None, flags).get_all_options()["direct_running_mode"] == mode


def test_one_worker_mode_with_more_workers_is_refused():
    with pytest.raises(ValueError, match=r"^--direct_num_workers=3 needs --direct_running_mode "):
        beam_options(None, ["--direct_num_workers=3", "--direct_running_mode=in_memory"])
