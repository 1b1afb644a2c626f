"""The metadata store on both backends (SQLite in the root, a real PostgreSQL server),
and the run lock that holds across processes (and machines: the database's)."""

import json
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from support import DAE, dae

from dae.pipeline.locks import RootBusy, lock_key, root_lock
from dae.pipeline.metadata import MetadataStore, default_url, redact

WRITERS, EXECUTIONS = 8, 25

WRITER = """
import sys
from dae.pipeline.metadata import MetadataStore
url, me, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = MetadataStore(url)
run = store.context("run", "shared-run")
for i in range(n):
    eid = store.start_execution(run, "shared-run", f"writer{me}", f"key{me}-{i}", {}, "code", {})
    out = {"out": {"type": "Examples", "uri": f"/w{me}/{i}", "fingerprint": f"{me}-{i}"}}
    store.finish_execution(eid, "succeeded", 0.1, {"i": i}, out)
    store.update_context(run, **{f"writer{me}": i})
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return default_url(tmp_path)
    return request.getfixturevalue("postgres_url")


def test_concurrent_writers_lose_nothing(store_url):
    """Eight processes each write executions, artifacts and events, and all update one
    run's properties (a read-modify-write): every record and every update is there."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, str(w), str(EXECUTIONS)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    store = MetadataStore(store_url)
    executions = store.executions_of_run("shared-run")
    assert len(executions) == WRITERS * EXECUTIONS
    assert all(e["status"] == "succeeded" for e in executions)
    assert {(e["component"], e["cache_key"]) for e in executions} == {
        (f"writer{w}", f"key{w}-{i}") for w in range(WRITERS) for i in range(EXECUTIONS)
    }
    for e in executions[:: EXECUTIONS - 1]:
        assert store.artifacts_of(e["id"])["out"]["fingerprint"].startswith(e["component"][6:])
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM artifacts")).scalar() == len(executions)
    (run,) = [r for r in store.runs() if r["name"] == "shared-run"]
    assert {k: v for k, v in run["properties"].items() if k.startswith("writer")} == {
        f"writer{w}": EXECUTIONS - 1 for w in range(WRITERS)
    }


def test_the_database_lock_holds_a_root(tmp_path, postgres_url):
    root = tmp_path / "root"

    def held(what, shared=False, at=root):
        return root_lock(at, what, shared=shared, url=postgres_url)

    with held("dae run first"):
        busy = pytest.raises(RootBusy, match=r"in use by dae run first \(pid \d+ on ")
        with busy, held("dae run second"):
            pass
        with pytest.raises(RootBusy, match="in use by dae run first"), held("stage", True):
            pass  # a stage waits for the run too
        with held("dae run elsewhere", at=tmp_path / "other"):
            pass  # another root is another key
    assert not (root / ".lock").exists()  # not flock: the volume may be a network one
    busy = pytest.raises(RootBusy, match=r"in use by stage a \(pid .*, stage b \(pid ")
    with held("stage a", True), held("stage b", True), busy, held("dae run late"):
        pass
    with root_lock(root, "dae run again", url=postgres_url):
        pass  # released


def test_a_busy_root_is_its_own_exit_code(tmp_path, postgres_url):
    root = tmp_path / "root"
    env = {**os.environ, "DAE_METADATA_URL": postgres_url, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with root_lock(root, "dae run holder", url=postgres_url):
        proc = subprocess.run(
            [DAE, "run", "--profile", "smoke", "--root", str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"dae: error: {root} is in use by")
    assert not (root / "runs").exists()


def test_an_unreachable_store_is_one_line_without_the_password(tmp_path, postgres):
    url = postgres.url("postgres").replace(f":{postgres.port}/", ":1/")  # nothing listens
    env = {**os.environ, "DAE_METADATA_URL": url}
    proc = subprocess.run(
        [DAE, "runs", "list", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("dae: error: the metadata store cannot be reached")
    assert "\n" not in proc.stderr.strip()
    assert postgres.password not in proc.stderr + proc.stdout
    assert postgres.password not in redact(url) and "***" in redact(url)


def test_lock_keys_follow_the_root(tmp_path):
    assert lock_key(tmp_path / "a") == lock_key(tmp_path / "a")
    assert lock_key(tmp_path / "a") != lock_key(tmp_path / "b")
    assert -(2**63) <= lock_key(tmp_path) < 2**63


@pytest.mark.slow
def test_a_pipeline_on_postgresql(tmp_path, postgres_url):
    """The smoke pipeline records to PostgreSQL while a second run on its root is refused
    by the database's lock; `dae runs` and `dae lineage` read the records back."""
    root = tmp_path / "root"
    env = {**os.environ, "DAE_METADATA_URL": postgres_url, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [DAE, "run", "--profile", "smoke", "--root", str(root), "--set", "model.family=dense"]
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + 120
    with engine.connect() as c:
        while not c.execute(
            sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        ).scalar():
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 75 and "is in use by dae run" in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert not (root / "metadata.sqlite").exists()  # every record went to the server

    listing = subprocess.run(
        [DAE, "runs", "list", "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    (line,) = [x for x in listing.splitlines()[1:] if "succeeded" in x]
    run_id = line.split()[0]
    assert run_id in out
    info = json.loads(
        subprocess.run(
            [DAE, "lineage", "denoiser", "1", "--root", str(root), "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert info["run_id"] == run_id and info["dataset"]["dataset"] == "mnist"
    assert set(info["executions"]) >= {"ingest", "train", "evaluate", "push"}
    store = MetadataStore(postgres_url)
    statuses = {e["component"]: e["status"] for e in store.executions_of_run(run_id)}
    assert set(statuses.values()) == {"succeeded"} and len(statuses) == 9
    assert dae("runs", "show", run_id, "--root", str(root), check=False).returncode == 1
