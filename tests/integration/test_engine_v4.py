"""Engine v4: one thread owns the engine's state; dropped handles let go; KV changes are never lost."""

import gc
import threading
import time

import pytest

from la_edge import Aligner, GenerationParams
from la_edge.runtime.engine import Engine

LONG = GenerationParams(max_tokens=400, ignore_eos=True, temperature=0.7)
GREEDY = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=8)


@pytest.fixture(scope="module")
def la(model_path):
    # The library's defaults: one request at a time, so an orphan would hold up the next one.
    with Aligner.load(model_path, n_ctx=512, n_threads=1) as aligner:
        yield aligner


def freed_within(la, steps0, timeout=30.0):
    """Wait until nothing runs or waits; return how many decode steps that took."""
    end = time.monotonic() + timeout
    while (la.engine.n_active or la.engine.n_queued) and time.monotonic() < end:
        time.sleep(0.005)
    assert la.engine.n_active == la.engine.n_queued == 0, "the abandoned request is still running"
    assert la.engine.leaked_sequences() == []
    return la.engine.steps - steps0


def test_a_stream_dropped_before_its_first_token_is_cancelled(la):
    steps0 = la.engine.steps
    it = la.stream("Write a long story.", "Be dramatic.", LONG)
    del it
    gc.collect()
    assert freed_within(la, steps0) <= 3  # prefill and at most a step or two, never 400 tokens


def test_a_dropped_submit_is_cancelled(la):
    steps0 = la.engine.steps
    la.submit("Write a long story.", "Be dramatic.", LONG)  # the Request is dropped at once
    gc.collect()
    assert freed_within(la, steps0) <= 3


def test_breaking_out_of_steps_cancels_the_request(la):
    def first_token():
        handle, steps = la.steps(la.prompts("Write a long story.", "Be dramatic."), LONG)
        for ev in steps:
            return ev.token  # break out; the handle and the iterator go with this frame

    steps0 = la.engine.steps
    assert isinstance(first_token(), int)
    gc.collect()
    assert freed_within(la, steps0) <= 4
    t0 = time.perf_counter()
    la.generate("Hi!", "Be brief.", GREEDY)
    assert time.perf_counter() - t0 < 30


def test_closing_the_step_iterator_cancels_even_while_the_handle_is_held(la):
    handle, steps = la.steps(la.prompts("Write a long story.", "Be dramatic."), LONG)
    next(steps)
    steps0 = la.engine.steps
    steps.close()
    assert freed_within(la, steps0) <= 2 and handle.finish_reason == "cancelled"


def test_a_held_step_iterator_keeps_its_request(la):
    """Dropping only the handle (the iterator still held) must not cancel: the iterator holds it."""
    _, steps = la.steps(la.prompts("Name three colours.", "Be brief."), GREEDY)
    gc.collect()
    events = list(steps)
    assert events and events[-1].finish_reason in ("stop", "length")


class FlakyClears:
    """The real backend; the next whole-sequence clear raises once when armed."""

    def __init__(self, inner):
        self.inner, self.armed, self.raised = inner, False, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def seq_remove(self, seq, p0=-1, p1=-1):
        if self.armed and p0 == -1:
            self.armed = False
            self.raised += 1
            raise RuntimeError("injected: llama_memory_seq_rm failed")
        return self.inner.seq_remove(seq, p0, p1)


def test_a_kv_clear_that_raises_is_retried_and_nothing_leaks(la):
    """Today's main dequeued every pending change before making them: a raise lost the rest (and
    surfaced in whichever thread cancelled). Now a change leaves the queue only once made."""
    pair = la.prompts("Name three colours.", "Be brief.")
    alone = la.generate(params=GREEDY, pair=pair).tokens
    backend = FlakyClears(la.backend)
    engine = Engine(backend, max_requests=1)
    try:
        h = engine.submit(pair, GREEDY.with_(max_tokens=200, ignore_eos=True))
        it = iter(h)
        next(it)
        backend.armed = True
        h.cancel()  # its two clears: the first raises once
        assert len(list(it)) <= 1 and h.finish_reason == "cancelled"  # at most the token sampled meanwhile
        assert [e.token for e in engine.submit(pair, GREEDY)] == alone
        assert backend.raised == 1 and engine.alive
        assert engine.leaked_sequences() == [] and sorted(engine.used_sequences()) == sorted(engine.parked_sequences())
    finally:
        assert engine.stop(10)


def test_engine_state_has_one_owner(la):
    """Queries are answered by the engine thread; no engine-level lock exists to take."""
    import la_edge.runtime.engine as engine_module
    import inspect

    src = inspect.getsource(engine_module)
    assert "threading.Lock" not in src and "threading.Condition" not in src and "_OwnedLock" not in src
    seen = []
    la.engine._call(lambda: seen.append(threading.current_thread().name))
    assert seen == ["la-edge-engine"]


def test_cancel_never_blocks_while_a_decode_runs(la):
    class Slow:
        def __init__(self, inner):
            self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def decode(self, entries):
            self.entered.set()
            self.release.wait(30)
            return self.inner.decode(entries)

    backend = Slow(la.backend)
    engine = Engine(backend, max_requests=1)
    try:
        h = engine.submit(la.prompts("Hi!", "Be brief."), GREEDY)
        assert backend.entered.wait(30)
        t0 = time.perf_counter()
        h.cancel()
        assert time.perf_counter() - t0 < 0.05 and h.finish_reason == "cancelled"
        assert engine.kv_stats()["cells"] > 0  # stats come from a snapshot, not a wait
        assert time.perf_counter() - t0 < 0.1
    finally:
        backend.release.set()
        assert engine.stop(10)


class Flaky:
    """The real backend; `broken` names an attribute that raises once armed."""

    def __init__(self, inner, broken):
        self.inner, self.broken, self.armed = inner, broken, False

    def __getattr__(self, name):
        if self.armed and name == self.broken:
            self.armed = False
            raise RuntimeError(f"injected: {name}")
        return getattr(self.inner, name)


def drained(handle, timeout=30):
    """(tokens, error) of a handle read in a thread, so that a hang fails the test."""
    out, err = [], []

    def read():
        try:
            out.extend(e.token for e in handle)
        except Exception as exc:
            err.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the consumer is still waiting"
    return out, (err[0] if err else None)


def test_an_error_while_emitting_ends_only_that_request(la):
    from la_edge.errors import StepFailedError

    pair = la.prompts("Name three colours.", "Be brief.")
    alone = la.generate(params=GREEDY, pair=pair).tokens
    backend = Flaky(la.backend, "is_eog")
    engine = Engine(backend, max_requests=1)
    try:
        h = engine.submit(pair, GREEDY)
        backend.armed = True
        _, err = drained(h)
        assert isinstance(err, StepFailedError) and engine.alive
        assert drained(engine.submit(pair, GREEDY))[0] == alone
        assert engine.leaked_sequences() == []
    finally:
        assert engine.stop(10)


def test_a_consumer_never_waits_forever_when_the_engine_breaks_while_ending_a_request(la):
    pair = la.prompts("Name three colours.", "Be brief.")
    backend = Flaky(la.backend, "n_ctx_total")  # read by the snapshot the engine publishes as a request ends
    engine = Engine(backend, max_requests=1)
    try:
        h = engine.submit(pair, GREEDY)
        it = iter(h)
        next(it)
        backend.armed = True
        h.cancel()
        tokens, err = drained(it)
        assert len(tokens) <= 1  # it ends (here the engine broke: later requests get EngineUnavailableError)
    finally:
        engine.stop(10)
