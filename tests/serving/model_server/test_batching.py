import asyncio
import threading
import time

import numpy as np
import pytest

from dae.serving.model_server.batching import (
    Batcher,
    BatchingParameters,
    QueueFull,
    TooLarge,
    parse_batching_parameters,
)


def test_parse_tf_serving_text_format():
    text = """
    # as in TF Serving's docs
    max_batch_size { value: 128 }
    batch_timeout_micros { value: 500 }
    max_enqueued_batches { value: 10 }
    num_batch_threads { value: 4 }
    pad_variable_length_inputs: true
    """
    assert parse_batching_parameters(text) == BatchingParameters(128, 500, 4, 10)
    assert parse_batching_parameters("") == BatchingParameters()


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
        ("max_batch_sise { value: 8 }", "unknown field 'max_batch_sise'"),
        ("max_batch_size { value: lots }", "must be an integer"),
        ("max_batch_size = 8", "cannot parse"),
    ],
)
def test_bad_batching_parameters_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_batching_parameters(text)


def _double(calls):
    def run(rows):
        calls.append(len(rows))
        return {"y": rows * 2}

    return run


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    calls = []

    async def main():
        b = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000))
        rows = [np.full((1, 3), i, np.float32) for i in range(8)]
        outs = await asyncio.gather(*(b.submit("k", _double(calls), r) for r in rows))
        b.close()
        return outs

    outs = asyncio.run(main())
    assert calls == [8]  # full batch: closed at once, one model call
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i))


def test_a_lone_request_waits_at_most_the_timeout():
    calls = []

    async def main():
        b = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=20_000))
        start = time.perf_counter()
        out = await b.submit("k", _double(calls), np.ones((2, 3), np.float32))
        b.close()
        return out, time.perf_counter() - start

    out, seconds = asyncio.run(main())
    assert calls == [2] and out["y"].shape == (2, 3) and 0.015 < seconds < 1.0


def test_large_requests_are_split_and_keys_never_mix():
    calls = []

    async def main():
        b = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=1000))
        big = b.submit("a", _double(calls), np.arange(10, dtype=np.float32)[:, None])
        other = b.submit("b", _double(calls), np.ones((1, 1), np.float32))
        out = await asyncio.gather(big, other)
        b.close()
        return out

    big, other = asyncio.run(main())
    np.testing.assert_array_equal(big["y"][:, 0], np.arange(10) * 2)
    assert other["y"].tolist() == [[2.0]] and sorted(calls) == [1, 2, 4, 4]


def test_large_batch_splitting_reads_as_tf_serving_does():
    """With splitting on, a model call takes max_execution_batch_size rows and
    max_batch_size is the largest request (k8s/base/batching.txt, shared with TF Serving)."""
    text = """
    max_batch_size { value: 1024 }
    max_execution_batch_size { value: 64 }
    enable_large_batch_splitting { value: true }
    max_enqueued_batches { value: 64 }
    """
    params = parse_batching_parameters(text)
    assert (params.max_batch_size, params.max_request_rows) == (64, 1024)
    off = text.replace("value: true", "value: false")
    assert parse_batching_parameters(off).max_batch_size == 1024  # splitting off: ignored
    calls = []

    async def main():
        b = Batcher(params)
        out = await b.submit("a", _double(calls), np.ones((200, 1), np.float32))
        with pytest.raises(TooLarge, match="1025 rows is over max_batch_size 1024"):
            await b.submit("a", _double(calls), np.ones((1025, 1), np.float32))
        b.close()
        return out

    assert len(asyncio.run(main())["y"]) == 200 and sorted(calls) == [8, 64, 64, 64]


def test_a_full_queue_refuses_instead_of_waiting():
    gate = threading.Event()

    def slow(rows):
        gate.wait(5)
        return {"y": rows}

    async def main():
        b = Batcher(
            BatchingParameters(max_batch_size=1, num_batch_threads=1, max_enqueued_batches=2)
        )
        first = [asyncio.ensure_future(b.submit("k", slow, np.ones((1, 1)))) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="batch queue is full"):
            await b.submit("k", slow, np.ones((1, 1)))
        gate.set()
        done = await asyncio.gather(*first)
        b.close()
        return done

    assert len(asyncio.run(main())) == 2


def test_a_model_error_reaches_every_waiter():
    def broken(rows):
        raise RuntimeError("kernel failed")

    async def main():
        b = Batcher(BatchingParameters(max_batch_size=2, batch_timeout_micros=10_000))
        results = await asyncio.gather(
            b.submit("k", broken, np.ones((1, 1))),
            b.submit("k", broken, np.ones((1, 1))),
            return_exceptions=True,
        )
        b.close()
        return results

    assert [str(r) for r in asyncio.run(main())] == ["kernel failed"] * 2


def test_a_due_batch_keeps_taking_rows_while_every_thread_is_busy():
    """TF Serving's scheduler: the timeout makes a batch eligible, a free thread closes it,
    so under load batches grow instead of queueing up small ones."""
    gate, calls = threading.Event(), []

    def slow(rows):
        calls.append(len(rows))
        gate.wait(5)
        return {"y": rows}

    async def main():
        b = Batcher(
            BatchingParameters(max_batch_size=32, batch_timeout_micros=1000, num_batch_threads=1)
        )
        first = asyncio.ensure_future(b.submit("k", slow, np.ones((1, 1))))
        await asyncio.sleep(0.05)  # the first batch runs, and holds the only thread
        later = []
        for _ in range(5):
            later.append(asyncio.ensure_future(b.submit("k", slow, np.ones((1, 1)))))
            await asyncio.sleep(0.01)  # each one arrives after the last one's timeout
        gate.set()
        await asyncio.gather(first, *later)
        b.close()

    asyncio.run(main())
    assert calls == [1, 5]


def test_the_batcher_keeps_no_runner_alive_after_its_batch():
    """A hot swap unloads the old servable; the batcher must not hold on to it."""
    import gc
    import weakref

    class Runner:
        def __call__(self, rows):
            return {"y": rows}

    async def main():
        b = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=1000))
        run = Runner()
        ref = weakref.ref(run)
        await asyncio.gather(*(b.submit("k", run, np.ones((1, 1))) for _ in range(6)))
        del run
        gc.collect()
        alive = ref() is not None  # while the batcher itself is still alive
        b.close()
        return alive

    assert not asyncio.run(main())
