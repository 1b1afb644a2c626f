"""What `dae stage` invalidates downstream when it re-runs one stage of a run: only the
stages that read, directly or not, an output whose content changed; the rest keep their
SUCCESS. Names no stage: the DAG's references say who reads what."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dae.files import SUCCESS
from dae.pipeline.dag import DAG, Node
from dae.pipeline.tracking import Tracker


def invalidated_by(changed: set[str], dag: tuple[Node, ...] = DAG) -> dict[str, str]:
    """The stages that read, directly or not, an output in `changed` ("stage.output"
    references), each with why, in the DAG's order."""
    out: dict[str, str] = {}
    for n in dag:
        for ref in n.inputs.values():
            if ref in changed:
                out[n.name] = f"its input {ref} changed"
            elif ref.split(".")[0] in out:
                out[n.name] = f"its input {ref} is from an invalidated stage"
            else:
                continue
            break
    return out


def hold(rdir: Path, n: Node, dag: tuple[Node, ...]) -> set[str]:
    """Before `dae stage` runs a stage of a run (or takes its cache hit): the SUCCESS of every
    stage downstream of it is taken away, so that a process killed half-way (its outputs
    already gone) leaves nothing downstream claiming to be valid; `settle` gives back what
    is still valid."""
    refs = {f"{n.name}.{k}" for k in n.component.SPEC.outputs}
    held = {s for s in invalidated_by(refs, dag) if (rdir / s / SUCCESS).exists()}
    for stage in held:
        (rdir / stage / SUCCESS).unlink()
    return held


def settle(
    tracker: Tracker,
    rdir: Path,
    n: Node,
    before: dict | None,
    held: set[str],
    dag: tuple[Node, ...],
    say: Callable[[str], None],
    failed=False,
) -> None:
    """After the stage ran, or took its cache hit: the held stages that read an output whose
    content changed since the stage's last success in the run (every output, when it failed
    or had none) stay invalid, in the folder and in the store, one console line each; the
    others get their SUCCESS back. The same output again leaves everything as it was."""
    names = n.component.SPEC.outputs
    if failed or before is None:
        changed = set(names)
    else:
        after = {k: tracker.artifacts.get(f"{n.name}.{k}", {}).get("fingerprint") for k in names}
        changed = {k for k in names if after[k] != before.get(k, {}).get("fingerprint")}
    stale = invalidated_by({f"{n.name}.{k}" for k in changed}, dag)
    stale = {s: why for s, why in stale.items() if s in held}
    for stage in held - set(stale):
        (rdir / stage / SUCCESS).touch()
    for stage, why in stale.items():
        say(f"[{stage}] invalidated: {why}")
    if stale:
        tracker.invalidated(stale)
    if not failed:
        tracker.valid(n.name)
