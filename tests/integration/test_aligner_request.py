"""Aligner.submit -> Request: the one path that stream(), generate() and the server share."""

import threading
import time
import warnings

import pytest

from la_edge import Aligner, GenerationParams

GREEDY = GenerationParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512, max_requests=2, n_threads=1) as aligner:
        aligner.start()
        yield aligner


def test_result_after_a_partial_stream_has_every_chunk(la):
    whole = la.generate("Name three colours.", "Be brief.", GREEDY)
    req = la.submit("Name three colours.", "Be brief.", GREEDY)
    it = req.stream()
    first = [next(it), next(it)]
    res = req.result()
    assert res.text == whole.text and res.tokens == whole.tokens
    assert res.text.startswith("".join(c.text for c in first))
    assert res.usage == req.usage and req.completion_tokens == len(res.tokens)
    assert req.done and req.finish_reason == res.finish_reason
    with pytest.raises(RuntimeError):
        req.stream()


def test_cancel_from_another_thread_ends_result_at_once(la):
    req = la.submit("Write a long story.", "Be dramatic.", GenerationParams(max_tokens=400, ignore_eos=True))
    threading.Timer(0.3, req.cancel).start()
    t0 = time.perf_counter()
    res = req.result()
    assert time.perf_counter() - t0 < 10
    assert res.finish_reason == "cancelled" and len(res.tokens) < 400
    assert la.engine.leaked_sequences() == []


def test_a_dropped_stream_cancels_its_request(la):
    it = la.stream("Write a long story.", "Be dramatic.", GenerationParams(max_tokens=400, ignore_eos=True))
    next(it)
    del it  # no reference cycle keeps it: closed, and so cancelled, at once
    end = time.time() + 5
    while la.status()["active"] and time.time() < end:
        time.sleep(0.01)
    assert la.status()["active"] == 0 and la.engine.leaked_sequences() == []


def test_cancel_all_and_status(la):
    reqs = [la.submit("Count to a thousand.", p, GenerationParams(max_tokens=300, ignore_eos=True))
            for p in ("Be brief.", None)]
    assert la.cancel_all() == 2
    assert all(r.result().finish_reason == "cancelled" for r in reqs)
    s = la.status()
    assert s["alive"] and s["failure"] is None and s["active"] == 0


class _FakeBackend:
    freed = 0

    def close(self):
        self.freed += 1


class _BusyEngine:
    """An engine whose decode never finishes: stop() always reports a decode in flight."""

    def __init__(self):
        self.backend = _FakeBackend()
        self.stops = []

    def stop(self, timeout):
        self.stops.append(timeout)
        return False


class _IdleEngine(_BusyEngine):
    def stop(self, timeout):
        self.stops.append(timeout)
        return True


def test_close_never_frees_the_model_under_a_running_decode():
    busy = Aligner(_BusyEngine())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        busy.close()
    assert busy.backend.freed == 0 and len(busy.engine.stops) == 2  # stop, then one bounded extra wait
    assert any("not freed" in str(w.message) for w in caught)
    idle = Aligner(_IdleEngine())
    idle.close()
    idle.close()  # idempotent
    assert idle.backend.freed == 1 and len(idle.engine.stops) == 1
