"""The pipeline's DAG: each stage, its component, and which artifacts feed it.

An input is bound as "producer_stage.output_name"; the runner resolves it to the folder
`runs/<run_id>/<producer_stage>/<output_name>/`. What a component reads and writes is
declared in its module (`SPEC`); this file only wires them. The resolver finds the model
in service for the evaluator to judge against. The report comes last: it reads what the
others wrote, and a report that fails never holds a push back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

from dae.components import (
    evaluate,
    ingest,
    push,
    report,
    resolver,
    train,
    transform,
    tune,
    validate,
)

EXAMPLES = "transform.transformed_examples"
GRAPH = "transform.transform_graph"
MODEL = "train.model"


@dataclass(frozen=True)
class Node:
    name: str
    component: ModuleType
    inputs: dict[str, str] = field(default_factory=dict)


DAG: tuple[Node, ...] = (
    Node("ingest", ingest),
    Node("validate", validate, {"examples": "ingest.examples"}),
    Node(
        "transform", transform, {"examples": "ingest.examples", "statistics": "validate.statistics"}
    ),
    Node("tune", tune, {"transformed_examples": EXAMPLES, "transform_graph": GRAPH}),
    Node(
        "train",
        train,
        {
            "transformed_examples": EXAMPLES,
            "transform_graph": GRAPH,
            "best_hyperparameters": "tune.best_hyperparameters",
        },
    ),
    Node("resolver", resolver, {"model": MODEL}),
    Node(
        "evaluate",
        evaluate,
        {"transformed_examples": EXAMPLES, "model": MODEL, "baseline": "resolver.baseline"},
    ),
    Node(
        "push",
        push,
        {"model": MODEL, "blessing": "evaluate.blessing", "evaluation": "evaluate.evaluation"},
    ),
    Node(
        "report",
        report,
        {
            "transformed_examples": EXAMPLES,
            "model": MODEL,
            "model_run": "train.model_run",
            "evaluation": "evaluate.evaluation",
            "blessing": "evaluate.blessing",
        },
    ),
)

STAGES = tuple(node.name for node in DAG)


def node(name: str) -> Node:
    for n in DAG:
        if n.name == name:
            return n
    raise KeyError(name)
