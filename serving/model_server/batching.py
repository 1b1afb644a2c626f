"""Dynamic batching, as TF Serving's BasicBatchScheduler does it: concurrent requests for one
servable signature are merged into a single model call.

A batch closes when it holds `max_batch_size` rows or when `batch_timeout_micros` have
passed since its first request; `num_batch_threads` batches run at once; beyond
`max_enqueued_batches` waiting batches a request is refused (RESOURCE_EXHAUSTED / 429)
rather than queued into a latency spiral.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np


class QueueFull(Exception):
    """The batch queue is full: the caller should answer RESOURCE_EXHAUSTED."""


class TooLarge(ValueError):
    """A request the queue could never hold, however long it waited: INVALID_ARGUMENT."""


@dataclass(frozen=True)
class BatchingParameters:
    """`max_batch_size` is the rows of one model call. With TF Serving's
    `enable_large_batch_splitting` and `max_execution_batch_size`, the call takes the latter
    and `max_batch_size` is the largest request accepted (`max_request_rows`)."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100
    max_request_rows: int | None = None


_FIELD = re.compile(r"(\w+)\s*(?::\s*(\S+)|\{\s*value\s*:\s*([^}\s]+)\s*\})")
# Fields of TF Serving's BatchingParameters that change nothing for dense, fixed-size inputs.
_ACCEPTED = {"pad_variable_length_inputs", "allowed_batch_sizes", "thread_pool_name"}
_SPLITTING = ("enable_large_batch_splitting", "max_execution_batch_size")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """TF Serving's text format: `max_batch_size { value: 128 }`, one field per line."""
    known = {f.name for f in fields(BatchingParameters)}
    values: dict[str, int] = {}
    body = re.sub(r"#.*", "", text)
    consumed = _FIELD.sub("", body)
    if consumed.strip():
        raise ValueError(f"batching parameters: cannot parse {consumed.strip().split()[0]!r}")
    splitting: dict[str, str] = {}
    for name, plain, wrapped in _FIELD.findall(body):
        if name in _ACCEPTED:
            continue
        if name in _SPLITTING:
            splitting[name] = wrapped or plain
            continue
        if name not in known - {"max_request_rows"}:
            raise ValueError(f"batching parameters: unknown field '{name}'")
        raw = wrapped or plain
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"batching parameters: {name} must be an integer, got {raw}") from None
        if values[name] < (0 if name == "batch_timeout_micros" else 1):
            raise ValueError(f"batching parameters: {name} must be positive, got {raw}")
    if splitting.get("enable_large_batch_splitting", "false").lower() == "true":
        execution = splitting.get("max_execution_batch_size")
        if execution is not None:
            if not execution.isdigit() or int(execution) < 1:
                raise ValueError(
                    f"batching parameters: max_execution_batch_size must be a "
                    f"positive integer, got {execution}"
                )
            largest = values.get("max_batch_size", BatchingParameters.max_batch_size)
            values |= {"max_batch_size": int(execution), "max_request_rows": largest}
    return BatchingParameters(**values)


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future


class _Queue:
    """The open batch of one key; it leaves `Batcher._queues` when it closes, so an unloaded
    servable's runner is not kept alive by the batcher."""

    def __init__(self, key: Hashable, run: Callable):
        self.key, self.run = key, run
        self.pending: list[_Pending] = []
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # its timeout passed: it runs as soon as a batch thread is free


class Batcher:
    """Merges rows submitted under the same key; `run(rows)` maps N rows to a dict of
    arrays with N rows each.

    As in TF Serving's shared batch scheduler, the timeout does not close a batch: it makes
    the open batch eligible to run, and the batch stays open (and keeps taking rows) until
    one of the `num_batch_threads` is free to take it. Under load, batches grow instead of
    queueing up small ones behind busy threads."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._pool = ThreadPoolExecutor(params.num_batch_threads, thread_name_prefix="batch")
        self._queues: dict[Hashable, _Queue] = {}
        self._closed: deque[tuple[Callable, list[_Pending]]] = deque()  # full, waiting for a thread
        self._due: deque[_Queue] = deque()  # open batches past their timeout, oldest first
        self._free = params.num_batch_threads
        self._waiting = 0  # closed batches not yet running or running
        self.batches_run = 0
        self.rows_run = 0

    async def submit(
        self, key: Hashable, run: Callable[[np.ndarray], dict[str, np.ndarray]], rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Rows over `max_batch_size` are split (enable_large_batch_splitting); every part is
        admitted at once or none is, so a refused request has had nothing computed."""
        step, limit = self.params.max_batch_size, self.params.max_enqueued_batches
        largest = self.params.max_request_rows
        if largest is not None and len(rows) > largest:
            raise TooLarge(
                f"a request of {len(rows)} rows is over max_batch_size {largest}, "
                "the largest request accepted"
            )
        parts = [rows[i : i + step] for i in range(0, len(rows), step)]
        if len(parts) > limit:
            raise TooLarge(
                f"a request of {len(rows)} rows takes {len(parts)} batches of max_batch_size "
                f"{step}, more than the {limit} max_enqueued_batches the queue holds"
            )
        if self._waiting + len(parts) > limit:
            raise QueueFull(
                f"the batch queue is full ({self._waiting} batches waiting); retry later"
            )
        futures = [self._enqueue(key, run, part) for part in parts]  # no await in between
        if len(futures) == 1:
            return await futures[0]
        done = await asyncio.gather(*futures)
        return {k: np.concatenate([d[k] for d in done]) for k in done[0]}

    def _enqueue(self, key: Hashable, run: Callable, rows: np.ndarray) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        queue = self._open(key, run)
        if queue.rows + len(rows) > self.params.max_batch_size:
            self._close(queue)
            self._dispatch()
            queue = self._open(key, run)
        item = _Pending(rows, loop.create_future())
        queue.pending.append(item)
        queue.rows += len(rows)
        if queue.rows >= self.params.max_batch_size:
            self._close(queue)
            self._dispatch()
        elif queue.timer is None and not queue.due:
            delay = self.params.batch_timeout_micros / 1e6
            queue.timer = loop.call_later(delay, self._timeout, queue)
        return item.future

    def _open(self, key: Hashable, run: Callable) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key, run)
        return queue

    def _timeout(self, queue: _Queue) -> None:
        queue.timer = None
        if queue.pending:
            queue.due = True
            self._due.append(queue)
            self._dispatch()

    def _close(self, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        queue.due = False  # its entry in self._due (if any) is skipped: no pending rows
        if self._queues.get(queue.key) is queue:
            del self._queues[queue.key]
        if not queue.pending:
            return
        batch, queue.pending, queue.rows = queue.pending, [], 0
        self._waiting += 1
        self._closed.append((queue.run, batch))

    def _dispatch(self) -> None:
        """Hand closed batches, then due open ones, to free batch threads."""
        loop = asyncio.get_running_loop()
        while self._free > 0:
            if not self._closed:
                while self._due and not (self._due[0].due and self._due[0].pending):
                    self._due.popleft()
                if not self._due:
                    return
                self._close(self._due.popleft())
            run, batch = self._closed.popleft()
            self._free -= 1
            rows = np.concatenate([p.rows for p in batch]) if len(batch) > 1 else batch[0].rows
            done = functools.partial(self._done, batch=batch, n=len(rows))
            future = self._pool.submit(run, rows)
            future.add_done_callback(functools.partial(loop.call_soon_threadsafe, done))

    def _done(self, future: Future, batch: list[_Pending], n: int) -> None:
        self._free += 1
        self._waiting -= 1
        try:
            out = future.result()
        except Exception as e:  # every waiter learns what happened to its rows
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        else:
            self.batches_run += 1
            self.rows_run += n
            start = 0
            for p in batch:
                if not p.future.done():  # a cancelled request just drops its rows
                    end = start + len(p.rows)
                    p.future.set_result({k: v[start:end] for k, v in out.items()})
                start += len(p.rows)
        self._dispatch()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
