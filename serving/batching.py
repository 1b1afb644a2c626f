"""Dynamic batching, as TF Serving's BasicBatchScheduler does it: concurrent requests for one
servable signature are merged into a single model call.

A batch closes when it holds `max_batch_size` rows or when `batch_timeout_micros` have
passed since its first request; `num_batch_threads` batches run at once; beyond
`max_enqueued_batches` waiting batches a request is refused (RESOURCE_EXHAUSTED / 429)
rather than queued into a latency spiral.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np


class QueueFull(Exception):
    """The batch queue is full: the caller should answer RESOURCE_EXHAUSTED."""


@dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100


_FIELD = re.compile(r"(\w+)\s*(?::\s*(\S+)|\{\s*value\s*:\s*([^}\s]+)\s*\})")
# Fields of TF Serving's BatchingParameters that change nothing for dense, fixed-size inputs.
_ACCEPTED = {"pad_variable_length_inputs", "allowed_batch_sizes", "enable_large_batch_splitting",
             "max_execution_batch_size", "thread_pool_name"}  # fmt: skip


def parse_batching_parameters(text: str) -> BatchingParameters:
    """TF Serving's text format: `max_batch_size { value: 128 }`, one field per line."""
    known = {f.name for f in fields(BatchingParameters)}
    values: dict[str, int] = {}
    body = re.sub(r"#.*", "", text)
    consumed = _FIELD.sub("", body)
    if consumed.strip():
        raise ValueError(f"batching parameters: cannot parse {consumed.strip().split()[0]!r}")
    for name, plain, wrapped in _FIELD.findall(body):
        if name in _ACCEPTED:
            continue
        if name not in known:
            raise ValueError(f"batching parameters: unknown field '{name}'")
        raw = wrapped or plain
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"batching parameters: {name} must be an integer, got {raw}") from None
        if values[name] < (0 if name == "batch_timeout_micros" else 1):
            raise ValueError(f"batching parameters: {name} must be positive, got {raw}")
    return BatchingParameters(**values)


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future


class _Queue:
    def __init__(self):
        self.pending: list[_Pending] = []
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """Merges rows submitted under the same key; `run(rows)` maps N rows to a dict of
    arrays with N rows each."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._pool = ThreadPoolExecutor(params.num_batch_threads, thread_name_prefix="batch")
        self._queues: dict[Hashable, _Queue] = {}
        self._runners: dict[Hashable, Callable] = {}
        self._waiting = 0  # closed batches not yet running or running
        self.batches_run = 0
        self.rows_run = 0

    async def submit(
        self, key: Hashable, run: Callable[[np.ndarray], dict[str, np.ndarray]], rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        if len(rows) > self.params.max_batch_size:  # split, as enable_large_batch_splitting
            step = self.params.max_batch_size
            parts = [self.submit(key, run, rows[i : i + step]) for i in range(0, len(rows), step)]
            done = await asyncio.gather(*parts)
            return {k: np.concatenate([d[k] for d in done]) for k in done[0]}
        if self._waiting >= self.params.max_enqueued_batches:
            raise QueueFull(
                f"the batch queue is full ({self._waiting} batches waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(key, _Queue())
        self._runners[key] = run
        if queue.rows + len(rows) > self.params.max_batch_size:
            self._close(key, queue)
        item = _Pending(rows, loop.create_future())
        queue.pending.append(item)
        queue.rows += len(rows)
        if queue.rows >= self.params.max_batch_size:
            self._close(key, queue)
        elif queue.timer is None:
            delay = self.params.batch_timeout_micros / 1e6
            queue.timer = loop.call_later(delay, self._close, key, queue)
        return await item.future

    def _close(self, key: Hashable, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if not queue.pending:
            return
        batch, queue.pending, queue.rows = queue.pending, [], 0
        self._waiting += 1
        asyncio.get_running_loop().create_task(self._execute(self._runners[key], batch))

    async def _execute(self, run, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        rows = np.concatenate([p.rows for p in batch]) if len(batch) > 1 else batch[0].rows
        try:
            out = await loop.run_in_executor(self._pool, run, rows)
        except Exception as e:  # every waiter learns what happened to its rows
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            self._waiting -= 1
        self.batches_run += 1
        self.rows_run += len(rows)
        start = 0
        for p in batch:
            if not p.future.done():  # a cancelled request just drops its rows
                end = start + len(p.rows)
                p.future.set_result({k: v[start:end] for k, v in out.items()})
            start += len(p.rows)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
