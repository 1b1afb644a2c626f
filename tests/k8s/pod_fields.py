"""A container's and a Pod's fields as the manifest tests read them (command and args, env,
mounts, ports)."""

from __future__ import annotations

from k8s_support import containers


def args(container: dict) -> list[str]:
    return container.get("command", []) + container.get("args", [])


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def value(container: dict, name: str) -> str:
    return env(container)[name]["value"]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def ports(pod: dict) -> dict:
    """containerPort by name and by number, over all containers of a Pod."""
    out = {}
    for c in containers(pod):
        for p in c.get("ports", []):
            out[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                out[p["name"]] = p["containerPort"]
    return out
