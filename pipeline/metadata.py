"""dae's metadata store, in the spirit of ML Metadata (which cannot be installed here).

Artifacts (type, uri, fingerprint, properties), executions (component, parameters, code
fingerprint, cache key, status, times, error), events linking them (input/output), and
contexts (the pipeline, each run). SQLAlchemy Core over a URL: SQLite in the pipeline root
by default, PostgreSQL on a cluster (its URL from the environment, `DAE_METADATA_URL`,
which a Kubernetes Secret sets: never from a file a ConfigMap holds, never in a log line).
Every write is one transaction, and concurrent writers from many processes or machines
lose nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_meta = sa.MetaData()
contexts = sa.Table(
    "contexts",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),  # pipeline | run
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("properties", sa.Text, default="{}"),
    sa.Column("created", sa.String(32)),
    sa.UniqueConstraint("type", "name"),
)
executions = sa.Table(
    "executions",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("component", sa.String(64), nullable=False),
    sa.Column("cache_key", sa.String(64), index=True),
    sa.Column("parameters", sa.Text),
    sa.Column("code_fingerprint", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),  # running|succeeded|failed|cached
    sa.Column("cached_from", sa.Integer),
    sa.Column("started", sa.String(32)),
    sa.Column("finished", sa.String(32)),
    sa.Column("seconds", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("summary", sa.Text),
)
artifacts = sa.Table(
    "artifacts",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("properties", sa.Text, default="{}"),
    sa.Column("created", sa.String(32)),
)
events = sa.Table(
    "events",
    _meta,
    sa.Column("execution_id", sa.Integer, sa.ForeignKey("executions.id"), nullable=False),
    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
    sa.Column("type", sa.String(8), nullable=False),  # input | output
    sa.Column("name", sa.String(64), nullable=False),
)
attributions = sa.Table(  # which run (context) an execution belongs to
    "associations",
    _meta,
    sa.Column("context_id", sa.Integer, sa.ForeignKey("contexts.id"), nullable=False),
    sa.Column("execution_id", sa.Integer, sa.ForeignKey("executions.id"), nullable=False),
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


ENV_URL = "DAE_METADATA_URL"
SCHEMA_LOCK = 0x64AE_5C4E  # an advisory lock key: one process creates the tables


def default_url(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'metadata.sqlite'}"


def store_url(configured: str | None, root: Path) -> str:
    """The config's metadata_url, else $DAE_METADATA_URL, else SQLite in the root."""
    return configured or os.environ.get(ENV_URL) or default_url(root)


def redact(url: str) -> str:
    """A URL fit for a message: the password replaced."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable metadata URL>"


class MetadataStore:
    def __init__(self, url: str):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Concurrent writers wait for each other instead of failing at once.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True  # a server restarted since the last query
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self._create_tables()

    def _create_tables(self, attempts: int = 5) -> None:
        """Processes starting together race to create the tables: PostgreSQL serializes
        them with a lock; on SQLite the loser finds them made and looks again."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as c:
                    if c.dialect.name == "postgresql":
                        c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                    _meta.create_all(c)
                return
            except sa.exc.OperationalError as e:
                if "already exists" not in str(e) or attempt == attempts - 1:
                    raise

    # -- writes --------------------------------------------------------------------------

    def context(self, type_: str, name: str, properties: dict | None = None) -> int:
        """The id of the (type, name) context, created if new (by whichever process wins
        the race for it: the others read it back)."""
        try:
            return self._context(type_, name, properties)
        except sa.exc.IntegrityError:
            return self._context(type_, name, properties)

    def _context(self, type_: str, name: str, properties: dict | None) -> int:
        with self.engine.begin() as c:
            row = c.execute(
                sa.select(contexts.c.id).where(contexts.c.type == type_, contexts.c.name == name)
            ).first()
            if row:
                if properties is not None:
                    c.execute(
                        contexts.update()
                        .where(contexts.c.id == row.id)
                        .values(properties=json.dumps(properties))
                    )
                return row.id
            return c.execute(
                contexts.insert().values(
                    type=type_, name=name, properties=json.dumps(properties or {}), created=now()
                )
            ).inserted_primary_key[0]

    def update_context(self, context_id: int, **fields: Any) -> None:
        self.edit_context(context_id, lambda props: props.update(fields))

    def edit_context(self, context_id: int, edit: Callable[[dict], object]) -> None:
        """Change a context's properties in place, in one transaction (concurrent edits of
        other properties, or other keys of one, are kept)."""
        with self.engine.begin() as c:
            query = (
                sa.select(contexts.c.properties)
                .where(contexts.c.id == context_id)
                .with_for_update()
            )
            props = json.loads(c.execute(query).scalar_one())
            edit(props)
            c.execute(
                contexts.update()
                .where(contexts.c.id == context_id)
                .values(properties=json.dumps(props))
            )

    def start_execution(
        self,
        run_ctx: int,
        run_id: str,
        component: str,
        cache_key: str,
        parameters: dict,
        code: str,
        inputs: dict[str, int],
    ) -> int:
        with self.engine.begin() as c:
            eid = c.execute(
                executions.insert().values(
                    run_id=run_id,
                    component=component,
                    cache_key=cache_key,
                    status="running",
                    parameters=json.dumps(parameters, sort_keys=True),
                    code_fingerprint=code,
                    started=now(),
                )
            ).inserted_primary_key[0]
            c.execute(attributions.insert().values(context_id=run_ctx, execution_id=eid))
            for name, aid in inputs.items():
                c.execute(
                    events.insert().values(
                        execution_id=eid, artifact_id=aid, type="input", name=name
                    )
                )
        return eid

    def finish_execution(
        self,
        eid: int,
        status: str,
        seconds: float,
        summary: dict,
        outputs: dict[str, dict] = None,
        error: str | None = None,
        cached_from: int | None = None,
    ) -> dict[str, int]:
        """Record how an execution ended and its outputs; returns output artifact ids."""
        ids = {}
        with self.engine.begin() as c:
            c.execute(
                executions.update()
                .where(executions.c.id == eid)
                .values(
                    status=status,
                    finished=now(),
                    seconds=seconds,
                    error=error,
                    summary=json.dumps(summary),
                    cached_from=cached_from,
                )
            )
            for name, art in (outputs or {}).items():
                aid = art.get("id")
                if aid is None:
                    aid = c.execute(
                        artifacts.insert().values(
                            type=art["type"],
                            uri=art["uri"],
                            fingerprint=art["fingerprint"],
                            properties=json.dumps(art.get("properties", {})),
                            created=now(),
                        )
                    ).inserted_primary_key[0]
                c.execute(
                    events.insert().values(
                        execution_id=eid, artifact_id=aid, type="output", name=name
                    )
                )
                ids[name] = aid
        return ids

    # -- reads ---------------------------------------------------------------------------

    def cache_candidates(self, component: str, cache_key: str) -> list[dict]:
        """Successful executions with this key, newest first (failed ones never count)."""
        with self.engine.connect() as c:
            rows = (
                c.execute(
                    sa.select(executions)
                    .where(
                        executions.c.component == component,
                        executions.c.cache_key == cache_key,
                        executions.c.status == "succeeded",
                    )
                    .order_by(executions.c.id.desc())
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def artifacts_of(self, eid: int, kind: str = "output") -> dict[str, dict]:
        with self.engine.connect() as c:
            joined = events.join(artifacts, events.c.artifact_id == artifacts.c.id)
            rows = (
                c.execute(
                    sa.select(events.c.name, artifacts)
                    .select_from(joined)
                    .where(events.c.execution_id == eid, events.c.type == kind)
                )
                .mappings()
                .all()
            )
            return {r["name"]: dict(r) for r in rows}

    def executions_of_run(self, run_id: str) -> list[dict]:
        with self.engine.connect() as c:
            rows = (
                c.execute(
                    sa.select(executions)
                    .where(executions.c.run_id == run_id)
                    .order_by(executions.c.id)
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def runs(self) -> list[dict]:
        with self.engine.connect() as c:
            rows = (
                c.execute(
                    sa.select(contexts).where(contexts.c.type == "run").order_by(contexts.c.id)
                )
                .mappings()
                .all()
            )
            return [{**dict(r), "properties": json.loads(r["properties"])} for r in rows]

    def producer_of(self, artifact_id: int) -> dict | None:
        """The execution that output this artifact (the first, not a cached reuse)."""
        with self.engine.connect() as c:
            row = (
                c.execute(
                    sa.select(executions)
                    .join(events, events.c.execution_id == executions.c.id)
                    .where(
                        events.c.artifact_id == artifact_id,
                        events.c.type == "output",
                        executions.c.status == "succeeded",
                    )
                    .order_by(executions.c.id)
                )
                .mappings()
                .first()
            )
            return dict(row) if row else None

    def artifacts_by_uri(self, uri: str) -> list[dict]:
        with self.engine.connect() as c:
            rows = (
                c.execute(
                    sa.select(artifacts).where(artifacts.c.uri == uri).order_by(artifacts.c.id)
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def artifacts_ending(self, tail: str) -> list[dict]:
        """Artifacts whose uri is `tail` or ends with `/tail` (relative records)."""
        with self.engine.connect() as c:
            uri = artifacts.c.uri
            match = (uri == tail) | uri.endswith("/" + tail, autoescape=True)
            rows = c.execute(sa.select(artifacts).where(match).order_by(artifacts.c.id))
            return [dict(r) for r in rows.mappings().all()]

    def abandon_running(self, run_id: str, error: str) -> None:
        """Executions a killed process left 'running' are failed, never cache hits."""
        with self.engine.begin() as c:
            c.execute(
                executions.update()
                .where(executions.c.run_id == run_id, executions.c.status == "running")
                .values(status="failed", error=error, finished=now())
            )


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # transactions begin where SQLAlchemy says (below)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    """Take the write lock when a transaction begins, not at its first write: a read then
    write (update_context) by two processes would otherwise lose one of them. PostgreSQL
    gets the same from SELECT ... FOR UPDATE."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
