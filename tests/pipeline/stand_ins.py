"""Stand-in components for the runner's rules: a SPEC and a run function, nothing else."""

from __future__ import annotations

from types import SimpleNamespace

from dae.artifacts import Artifact
from dae.component import Spec, StageResult


def stand_in(run, inputs=(), outputs=("out",), **spec) -> SimpleNamespace:
    """A component whose `run(ctx)` returns its metrics (a dict) or a StageResult."""

    def execute(ctx):
        result = run(ctx)
        return result if isinstance(result, StageResult) else StageResult(result or {})

    declared = Spec(
        inputs=dict.fromkeys(inputs, Artifact), outputs=dict.fromkeys(outputs, Artifact), **spec
    )
    return SimpleNamespace(SPEC=declared, run=execute)
