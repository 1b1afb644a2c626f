"""Argo Workflows' rules that dae's manifests are checked against offline, for the forms the
compiled workflow uses: its JSON schema (tests/k8s/crds/README.md; the install's CRDs do not
validate), simple tags ({{...}}), retry expressions (expr: ==, !=, in, contains, !, ||, &&) and
a resource step's success/failure conditions (label-selector requirements on the resource's
JSON, each failure requirement alone failing the step, in key order). The cluster tests
(tests/cluster) show each rule once on the real controller; these check every exit code and
Job condition against them in milliseconds. What is left of the home-made runner (issue 24)."""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "k8s" / "crds" / "argoproj.io-v1alpha1.schema.json.gz"

TAG = re.compile(r"\{\{([^{}=][^{}]*)\}\}")


def fill(text: str, values: dict[str, str]) -> str:
    """Argo's simple tags replaced by `values`; a tag left over fails, as in Argo."""
    out = TAG.sub(lambda m: values.get(m.group(1).strip(), m.group(0)), text)
    assert "{{" not in out, f"unresolved Argo tag in {out[out.index('{{') :][:80]!r}"
    return out


def retry(expression: str | None, exit_code: str, status: str, message: str) -> bool:
    """An expr retry expression on lastRetry (every value a string, as in Argo)."""
    if not expression:
        return True
    python = re.sub(r"(\S+) contains ('[^']*')", r"(\2 in \1)", expression)
    python = python.replace("||", " or ").replace("&&", " and ")
    python = re.sub(r"!(?!=)", " not ", python)
    last = {"exitCode": exit_code, "status": status, "message": message}
    python = re.sub(r"lastRetry\.(\w+)", lambda m: repr(last[m.group(1)]), python)
    assert re.fullmatch(r"[\w\s'\"()\[\],.=!<>-]*", python), python
    return bool(eval(python, {"__builtins__": {}}))  # noqa: S307 - our own expressions


def _requirements(selector: str) -> list[str]:
    """A label selector's requirements (commas inside `in (...)` kept), sorted by key as
    Kubernetes' parser sorts them."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return sorted((p for p in parts if p), key=lambda r: re.split(r"[\s=!<>]", r, maxsplit=1)[0])


def _lookup(obj, path: str):
    for part in path.split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return None
    return obj


def matches(requirement: str, obj: dict) -> bool:
    m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", requirement)
    if m:
        value = _lookup(obj, m.group(1))
        inside = str(value) in [v.strip() for v in m.group(3).split(",")]
        return (value is not None and inside) if m.group(2) == "in" else not inside
    m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=|>|<)\s*(\S+)", requirement)
    if m:
        value = _lookup(obj, m.group(1))
        op, want = m.group(2), m.group(3)
        if op in (">", "<"):
            return value is not None and (
                float(value) > float(want) if op == ">" else float(value) < float(want)
            )
        return (str(value) == want) == (op != "!=")
    return _lookup(obj, requirement.strip()) is not None  # exists


def resource_state(success: str, failure: str, obj: dict) -> tuple[str | None, str]:
    """("Succeeded" | "Failed" | None (wait), the message Argo's executor reports)."""
    for req in _requirements(failure):
        if matches(req, obj):
            return "Failed", f"failure condition '{req}' evaluated true"
    if all(matches(r, obj) for r in _requirements(success)):
        return "Succeeded", ""
    return None, "Neither success condition nor the failure condition has been matched"


def _strict(schema):
    """As `kubectl apply` validates against a full CRD: an object schema with properties
    admits no other field."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def argo_schema() -> dict:
    doc = json.loads(gzip.decompress(SCHEMA.read_bytes()))
    return {"$schema": doc["$schema"], "definitions": _strict(doc["definitions"])}


def argo_errors(obj: dict) -> list[str]:
    """What Argo Workflows' JSON schema finds wrong with one of its objects."""
    import jsonschema

    kind = f"#/definitions/io.argoproj.workflow.v1alpha1.{obj['kind']}"
    validator = jsonschema.Draft202012Validator({**argo_schema(), "$ref": kind})
    return [
        f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)
    ]
