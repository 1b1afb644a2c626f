"""The contract between the runner and a component (TFX's ComponentSpec and executor).

A component module declares `SPEC` (its typed inputs and outputs, the config values it
reads, how it may be cached) and a `run(ctx) -> StageResult`. The runner treats every
component alike through this contract: it knows no stage by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dae.artifacts import Artifact


class StageError(RuntimeError):
    """A stage stopped for a reason the user can act on; the message is one line."""


class Progress:
    """Steps of a long stage (trials, epochs) as it reports them; the runner's shows them
    (this one shows nothing)."""

    def advance(self, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class StageContext:
    """What the runner hands a component: its artifact folders and the run's settings."""

    config: Any
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    run_id: str
    run_dir: Path
    serving_dir: Path  # <root>/serving: where servables are pushed and resolved from
    log: Callable[[str], None] = print
    # progress(unit, total) -> a Progress: "epoch" of 15, "trial" of 6 (None: unknown).
    progress: Callable[[str, int | None], Progress] = lambda unit, total: Progress()


@dataclass(frozen=True)
class External:
    """An artifact a stage wrote outside its run folder (a pushed servable)."""

    type: type[Artifact]
    uri: str


@dataclass
class StageResult:
    """What a stage reports: `metrics` are recorded with its execution and merged into the
    run's metrics.json; `external` artifacts are recorded as its outputs too."""

    metrics: dict[str, Any] = field(default_factory=dict)
    external: dict[str, External] = field(default_factory=dict)
    # A secondary process of a distributed stage (a tuner or training worker): the stage's
    # folder and record belong to its chief.
    worker: bool = False


def pick(config: Any, paths: tuple[str, ...]) -> dict[str, Any]:
    """The values at dotted `paths` of a config ("tune.max_trials"), keyed by path."""
    data = config if isinstance(config, dict) else config.to_dict()
    out = {}
    for path in paths:
        value = data
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return out


@dataclass(frozen=True)
class Spec:
    """A component's declaration, next to its code."""

    inputs: Mapping[str, type[Artifact]]
    outputs: Mapping[str, type[Artifact]]
    # The config it reads: dotted paths, or a function of the config giving {path: value}
    # for the values that take effect (a tuner's unused settings stay out of the cache key).
    parameters: tuple[str, ...] | Callable[[Any], dict[str, Any]] = ()
    # Outputs that are working state kept across executions (finished trials, backups).
    resumable: tuple[str, ...] = ()
    # The runner holds SIGINT/SIGTERM while the stage and its record are written.
    atomic: bool = False
    # False for a resolver: what it reads lies outside the pipeline, so it always runs.
    cache: bool = True
    # What it reads from outside the pipeline, as a fingerprint (part of its cache key).
    external: Callable[[Any], str] | None = None
    # Checked before a run folder exists, so bad input leaves nothing behind.
    preflight: Callable[[Any], None] | None = None
    # Is this process a secondary of a distributed execution (from the environment)?
    secondary: Callable[[], bool] = lambda: False

    def values(self, config: Any) -> dict[str, Any]:
        if callable(self.parameters):
            return self.parameters(config)
        return pick(config, self.parameters)
