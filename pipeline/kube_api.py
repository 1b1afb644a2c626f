"""What the compiled workflow's own containers ask the Kubernetes API server (stdlib only:
they run in the dae image with a projected ServiceAccount token, see pipeline/argo_steps.py):

  check: the workflow's first step. Argo's executor in every Pod reports to the API server; if
    the namespace's NetworkPolicies keep it out, every step would hang and retry for minutes.
    One request with the Pod's token says so at once, in one line, and exits 1.
  watch JOB: beside each worker of a training Job (a native sidecar). The Job is owned by its
    workflow, but a stopped, terminated or timed-out workflow still exists, and Argo deletes
    nothing a resource step created (v3.7.18 runs no exit handler on terminate): when the
    workflow is no longer running, delete the Job, and with it its Pods.

    python -m dae.pipeline.kube_api check | watch JOB
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request

SERVER = "https://kubernetes.default.svc"
TOKEN_DIR = "/var/run/secrets/dae/api"  # the projected volume the compiler mounts
POLICY = "dae-workflow-egress-apiserver"
DONE = ("Succeeded", "Failed", "Error")


def _request(method: str, path: str, timeout: float = 10) -> bytes:
    server = os.environ.get("DAE_API_SERVER", SERVER)
    token_dir = os.environ.get("DAE_API_TOKEN_DIR", TOKEN_DIR)
    with open(f"{token_dir}/token") as f:
        token = f.read().strip()
    context = None
    if server.startswith("https:"):
        context = ssl.create_default_context(cafile=f"{token_dir}/ca.crt")
    request = urllib.request.Request(
        server + path, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
        return answer.read()


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return (str(reason).splitlines() or [type(e).__name__])[0]


def check() -> int:
    """Exit 1 with one line if the API server cannot be reached (no retry: the cause is the
    cluster's policy, which a retry does not change)."""
    server = os.environ.get("DAE_API_SERVER", SERVER)
    try:
        _request("GET", "/api")
    except (OSError, ValueError) as e:
        print(
            f"cannot reach the Kubernetes API server at {server}: {_reason(e)}; the "
            f"NetworkPolicy {POLICY} must allow it (docs/kubernetes.md)",
            file=sys.stderr,
        )
        return 1
    print(f"the Kubernetes API server at {server} answers")
    return 0


def workflow_over(namespace: str, workflow: str) -> str | None:
    """Why the workflow is no longer running (None: it is, or the server did not answer)."""
    try:
        body = _request(
            "GET", f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflows/{workflow}"
        )
    except urllib.error.HTTPError as e:
        return "deleted" if e.code == 404 else None
    except (OSError, ValueError):
        return None  # unreachable for now: ask again
    obj = json.loads(body)
    shutdown = obj.get("spec", {}).get("shutdown")
    phase = obj.get("status", {}).get("phase")
    if shutdown:
        return f"shut down ({shutdown})"
    return phase.lower() if phase in DONE else None


def watch(job: str, interval: float = 10) -> int:
    namespace, workflow = os.environ["NAMESPACE"], os.environ["WORKFLOW"]
    # The kubelet stops this sidecar with SIGTERM once the worker is done; as PID 1 of its
    # container, Python would ignore it and hold the Pod (and the Job) for the grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while (why := workflow_over(namespace, workflow)) is None:
        time.sleep(interval)
    print(f"workflow {workflow} {why}: deleting Job {job} and its Pods", flush=True)
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}?propagationPolicy=Background"
    try:
        _request("DELETE", path)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    return 0


def main(argv: list[str]) -> int:
    if argv == ["check"]:
        return check()
    if len(argv) == 2 and argv[0] == "watch":
        return watch(argv[1], float(os.environ.get("DAE_WATCH_INTERVAL", "10")))
    print("usage: python -m dae.pipeline.kube_api check | watch JOB", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
