"""Run a compiled WorkflowTemplate on this machine the way Argo runs it on a cluster: each
task's Pod as local processes with exactly its container's command, arguments and
environment (Argo's tags filled in as Argo fills them, Kubernetes' env sources resolved, the
image's ENV), in dependency order, parallel tasks and a sequence's Pods at once, `when`,
retries and the exit handler as Argo evaluates them, a resource step's Job as its Pods.

What a cluster provides is stood in for, and only that: a volume is a folder (a mount path in
an argument or a value becomes that folder; TMPDIR points at the Pod's /tmp), a Secret's key
is a value given here, and cluster DNS (a Service, a Job Pod's <hostname>.<subdomain>) is a
`dae` shim first on PATH that maps those names to 127.0.0.1 ports before it starts the real
`dae`. Retries do not wait out their backoff. Every Pod is recorded: its task, argv and env as
the Pod sees them, its times, exit code and peak memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from argo_expr import fill_all, resource_state, retry, when
from argo_pod import BIN, SHIM, PodRun, image_env, local_paths, wait
from support import free_port


class LocalArgo:
    def __init__(
        self,
        objects: list[dict],
        root: Path,
        work: Path,
        secrets_: dict,
        lose_first: dict[str, float] | None = None,
    ):
        """`lose_first`: {template: seconds}: its first Pod is killed (SIGKILL, as a lost
        node or the OOM killer would) that long after it starts."""
        self.objects, self.root, self.work = objects, Path(root), Path(work)
        self.lose_first = dict(lose_first or {})
        (self.template,) = [o for o in objects if o["kind"] == "WorkflowTemplate"]
        self.config_maps = {
            o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"
        }
        self.services = [o for o in objects if o["kind"] == "Service"]
        self.secrets = secrets_  # {(name, key): value}; a missing key leaves the var unset
        self.bin = self.work / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)  # the volume exists before any Pod
        shim = self.bin / "dae"
        shim.write_text(SHIM.format(python=sys.executable, dae=str(BIN / "dae")))
        shim.chmod(0o755)
        self.pods: list[PodRun] = []
        self.ports: dict[tuple[str, int], int] = {}  # (pod template, containerPort) -> local
        self.labels: dict[str, dict] = {}  # pod template -> its Pods' labels
        self.names: dict[str, str] = {}  # a Job Pod's <hostname>.<subdomain>:port -> local
        self.lock = threading.Lock()

    # ---- one workflow ----------------------------------------------------------------------

    def submit(self, name: str, parameters: dict | None = None) -> dict:
        spec = self.template["spec"]
        self.values = {"workflow.name": name}
        for p in spec.get("arguments", {}).get("parameters", []):
            self.values[f"workflow.parameters.{p['name']}"] = (parameters or {}).get(
                p["name"], p["value"]
            )
        self.templates = {t["name"]: t for t in spec["templates"]}
        self.failures: list[dict] = []
        start = time.time()
        try:
            phase = self._dag(self.templates[spec["entrypoint"]])
            self.values |= {
                "workflow.status": phase,
                "workflow.failures": json.dumps(self.failures),
            }
            if spec.get("onExit"):
                self._steps(self.templates[spec["onExit"]])
        finally:
            self.stop()
        return {"phase": phase, "seconds": round(time.time() - start, 1), "failures": self.failures}

    def stop(self) -> None:
        """Kill whatever still runs (a test that failed half-way leaves no process behind)."""
        for run in self.pods:
            if run.process is not None and run.exit_code is None:
                with contextlib.suppress(ProcessLookupError):
                    run.process.kill()

    def _dag(self, template: dict) -> str:
        """Start each task once its dependencies succeeded or were skipped; after a failure
        start nothing more (failFast) and let the running ones end."""
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        state: dict[str, str] = {}
        threads: dict[str, threading.Thread] = {}
        outputs: dict[str, dict] = {}
        while True:
            for n, thread in list(threads.items()):
                if not thread.is_alive():
                    thread.join()
                    del threads[n]
            progressed = False
            if "Failed" not in state.values():
                for n, t in tasks.items():
                    deps = t.get("dependencies", [])
                    if (
                        n in state
                        or n in threads
                        or not all(state.get(d) in ("Succeeded", "Skipped") for d in deps)
                    ):
                        continue
                    progressed = True
                    values = self.values | self._task_values(outputs)
                    task = {k: v if k == "arguments" else fill_all(v, values) for k, v in t.items()}
                    if "when" in task and not when(task["when"]):
                        state[n] = "Skipped"
                        continue
                    threads[n] = threading.Thread(
                        target=self._task, args=(task, state, outputs), daemon=True
                    )
                    threads[n].start()
            if not threads and not progressed:
                break
            time.sleep(0.05)
        done = len(state) == len(tasks) and "Failed" not in state.values()
        return "Succeeded" if done else "Failed"

    def _task_values(self, outputs: dict) -> dict[str, str]:
        return {
            f"tasks.{t}.outputs.parameters.{k}": v for t, o in outputs.items() for k, v in o.items()
        }

    def _task(self, task: dict, state: dict, outputs: dict) -> None:
        """A task's node, or one per item of its sequence, all at once."""
        template = self.templates[task["template"]]
        items = [None]
        if "withSequence" in task:
            items = [str(i) for i in range(int(task["withSequence"]["count"]))]
        results, threads = {}, []

        def node(name: str, item: str | None) -> None:
            try:
                values = self.values | ({"item": item} if item is not None else {})
                args = {
                    p["name"]: fill_all(p["value"], values)
                    for p in task.get("arguments", {}).get("parameters", [])
                }
                results[name] = self._node(task["name"], name, template, args)
            except Exception as e:  # noqa: BLE001 - the runner's own error fails the node
                self.failures.append({"displayName": name, "message": f"local runner: {e!r}"})

        for item in items:
            name = task["name"] if item is None else f"{task['name']}({item})"
            threads.append(threading.Thread(target=node, args=(name, item), daemon=True))
            threads[-1].start()
        for thread in threads:
            thread.join()
        ok = len(results) == len(items) and all(p == "Succeeded" for p, _ in results.values())
        outputs[task["name"]] = next(iter(results.values()))[1] if len(results) == 1 else {}
        state[task["name"]] = "Succeeded" if ok else "Failed"

    def _node(self, task: str, node: str, template: dict, args: dict) -> tuple[str, dict]:
        """One node with its retries: (phase, output parameters)."""
        strategy = template.get("retryStrategy") or {}
        limit = int(strategy.get("limit", 0))
        for attempt in range(limit + 1):
            phase, code, message, outputs = self._attempt(task, node, template, args, attempt)
            if phase == "Succeeded":
                return phase, outputs
            retried = attempt < limit and retry(
                strategy.get("expression"), str(code), "Failed", message
            )
            if not retried:
                with self.lock:
                    self.failures.append(
                        {
                            "displayName": node,
                            "message": message,
                            "templateName": template["name"],
                            "phase": "Failed",
                        }
                    )
                return "Failed", {}
        raise AssertionError("unreachable")

    def _attempt(self, task, node, template, args, attempt):
        inputs = {
            p["name"]: args.get(p["name"], p.get("value"))
            for p in template.get("inputs", {}).get("parameters", [])
        }
        values = self.values | {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        values |= {"retries": str(attempt)}
        if "resource" in template:
            return self._job(task, node, fill_all(template, values), attempt)
        if template["name"] == "api-check":  # no API server here: the real cluster's to show
            return "Succeeded", 0, "", {}
        t = fill_all({k: v for k, v in template.items() if k != "retryStrategy"}, values)
        pod = f"{self.values['workflow.name']}-{t['name']}-{secrets.randbelow(10**10)}"
        labels = {
            **self.template["spec"].get("podMetadata", {}).get("labels", {}),
            **t.get("metadata", {}).get("labels", {}),
        }
        spec = {"volumes": self.template["spec"].get("volumes", [])}
        pod_dir = self.work / "pods" / f"{pod}"
        for init in t.get("initContainers", []):
            code = self._run(task, node, pod, init, spec, labels, pod_dir, attempt, {}).exit_code
            if code != 0:
                return "Failed", code, f"Error (exit code {code})", {}
        run = self._run(
            task,
            node,
            pod,
            {"name": "main", **t["container"]},
            spec,
            labels,
            pod_dir,
            attempt,
            {},
            template_name=t["name"],
        )
        outputs = {}
        for p in t.get("outputs", {}).get("parameters", []):
            path = local_paths(p["valueFrom"]["path"], self._mounts(t["container"], spec, pod_dir))
            outputs[p["name"]] = Path(path).read_text() if Path(path).exists() else ""
        if run.exit_code != 0:
            return "Failed", run.exit_code, f"Error (exit code {run.exit_code})", {}
        return "Succeeded", 0, "", outputs

    # ---- a Pod's container as a process ----------------------------------------------------

    def _mounts(self, container: dict, spec: dict, pod_dir: Path) -> dict[str, Path]:
        volumes = {v["name"]: v for v in spec["volumes"]}
        out = {}
        for m in container.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "persistentVolumeClaim" in v:
                local = self.root
            elif "configMap" in v:
                local = pod_dir / "cm" / m["name"]
                local.mkdir(parents=True, exist_ok=True)
                for key, text in self.config_maps[v["configMap"]["name"]].items():
                    (local / key).write_text(text)
            else:
                local = pod_dir / "volumes" / m["name"]
                local.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"]] = local
        return out

    def _env(self, container: dict, fields: dict) -> dict[str, str]:
        env = {}
        for e in container.get("env", []):
            source = e.get("valueFrom", {})
            if "value" in e:
                env[e["name"]] = re.sub(
                    r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"]
                )
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if (ref["name"], ref["key"]) in self.secrets:
                    env[e["name"]] = self.secrets[(ref["name"], ref["key"])]
            elif "fieldRef" in source:
                env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
            else:
                raise AssertionError(f"unsupported env source {e}")
        return env

    def _dns_for(self, env: dict, own: dict[str, int], wait: float = 120.0) -> dict[str, str]:
        """_dns once every Service this Pod's env names has a Pod behind it: on Kubernetes a
        Service's name resolves before its Pod is up (gRPC's wait_for_ready retries), here
        its local port exists only once that Pod has started (it starts beside this one)."""
        names = {s["metadata"]["name"] for s in self.services} & set(map(str, env.values()))
        deadline = time.monotonic() + wait
        while True:
            hosts = self._dns(own)
            if all(any(h.startswith(f"{n}:") for h in hosts) for n in names):
                return hosts
            if time.monotonic() > deadline:
                return hosts
            time.sleep(0.2)

    def _dns(self, own: dict[str, int]) -> dict[str, str]:
        """Each Service's name:port -> the local port of the Pod it selects; this Pod's own
        bind address (0.0.0.0:port) -> its local port; a Job Pod's name -> its port."""
        hosts = {f"0.0.0.0:{p}": f"127.0.0.1:{local}" for p, local in own.items()}
        with self.lock:
            hosts |= dict(self.names)
            for s in self.services:
                selector = s["spec"]["selector"]
                for (template, _), local in self.ports.items():
                    labels = self.labels.get(template, {})
                    if all(labels.get(k) == v for k, v in selector.items()):
                        for port in s["spec"]["ports"]:
                            hosts[f"{s['metadata']['name']}:{port['port']}"] = f"127.0.0.1:{local}"
        return hosts

    def _run(
        self,
        task,
        node,
        pod,
        container,
        spec,
        labels,
        pod_dir,
        attempt,
        fields,
        hostname=None,
        template_name="",
    ) -> PodRun:
        mounts = self._mounts(container, spec, pod_dir)
        own = {}
        for port in container.get("ports", []):
            key = (
                f"{task}:{hostname or labels.get('app.kubernetes.io/component')}",
                port["containerPort"],
            )
            with self.lock:
                own[port["containerPort"]] = self.ports.setdefault(key, free_port())
                self.labels[key[0]] = labels
        argv = [*container.get("command", []), *container.get("args", [])]
        env = image_env() | self._env(container, fields)
        record = PodRun(
            task,
            node,
            pod,
            argv,
            dict(env),
            attempt=attempt,
            limits=container.get("resources", {}).get("limits", {}),
        )
        tmp = mounts.get("/tmp", pod_dir / "tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        local_env = {k: local_paths(v, mounts) for k, v in env.items()}
        local_env |= {
            "PATH": f"{self.bin}:{BIN}:/usr/bin:/bin",
            "TMPDIR": str(tmp),
            "ARGO_LOCAL_DNS": json.dumps(self._dns_for(env, own)),
        }
        local_argv = [local_paths(a, mounts) for a in argv]
        record.log = pod_dir / f"{container['name']}-{attempt}.log"
        record.log.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.pods.append(record)
        record.started = time.time()
        with open(record.log, "w") as out:
            proc = subprocess.Popen(
                local_argv, env=local_env, cwd=pod_dir, stdout=out, stderr=subprocess.STDOUT
            )
            record.process = proc
            delay = self.lose_first.pop(template_name, None) if attempt == 0 else None
            if delay is not None and container["name"] == "main":
                threading.Timer(delay, proc.kill).start()
            status = wait(proc, record)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = 128 - code if code < 0 else code  # killed by a signal: 128 + it
        record.finished, record.exit_code = time.time(), proc.returncode
        return record

    # ---- a resource step: the Job it creates -------------------------------------------------

    def _job(self, task: str, node: str, template: dict, attempt: int):
        """The Job controller, for an Indexed Job of backoffLimit 0: every index at once; the
        first failed Pod fails the Job (its podFailurePolicy says why) and stops the others."""
        resource = template["resource"]
        job = yaml.safe_load(resource["manifest"])
        name = job["metadata"]["generateName"] + secrets.token_hex(3)[:5]
        pod_template = job["spec"]["template"]
        spec = pod_template["spec"]
        (container,) = spec["containers"]
        count = int(job["spec"]["completions"])
        with self.lock:  # the Pods' DNS names (<hostname>.<subdomain>) before any starts
            for i in range(count):
                for p in container.get("ports", []):
                    self.names[f"{name}-{i}.{spec['subdomain']}:{p['containerPort']}"] = (
                        f"127.0.0.1:{free_port()}"
                    )
        runs: dict[int, PodRun] = {}

        def one(i: int) -> None:
            fields = {
                "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(i),
                "metadata.labels['batch.kubernetes.io/job-name']": name,
            }
            pod_dir = self.work / "pods" / f"{name}-{i}-{attempt}"
            runs[i] = self._run(
                task,
                f"{node} {name}-{i}",
                f"{name}-{i}",
                container,
                spec,
                pod_template["metadata"]["labels"],
                pod_dir,
                attempt,
                fields,
                hostname=f"{name}-{i}",
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if any(r.exit_code not in (None, 0) for r in list(runs.values())):
                for r in list(runs.values()):  # the Job failed: its other Pods are stopped
                    if r.exit_code is None and getattr(r, "process", None):
                        r.process.kill()
            time.sleep(0.2)
        codes = [runs[i].exit_code for i in range(count)]
        rules = job["spec"].get("podFailurePolicy", {}).get("rules", [])
        status: dict = {"failed": sum(c != 0 for c in codes), "succeeded": codes.count(0)}
        if all(c == 0 for c in codes):
            status["completionTime"] = "now"
        else:
            first = next(c for c in codes if c != 0)
            policy = any(first in r["onExitCodes"]["values"] for r in rules)
            reason = "PodFailurePolicy" if policy else "BackoffLimitExceeded"
            status["conditions"] = [{"type": "FailureTarget", "reason": reason}]
        conditions = resource["successCondition"], resource["failureCondition"]
        phase, message = resource_state(*conditions, {"status": status})
        assert phase is not None, message
        return phase, 0 if phase == "Succeeded" else 1, message, {}

    # ---- the exit handler --------------------------------------------------------------------

    def _steps(self, template: dict) -> None:
        for group in template["steps"]:
            for step in group:
                step = fill_all(step, self.values)
                if "when" not in step or when(step["when"]):
                    self._node(step["name"], step["name"], self.templates[step["template"]], {})
