"""Faults injected around the real llama.cpp backend: only the failed batch's requests end.

Eight requests run concurrently from threads with the background loop on; every wait has a bound,
and a test fails rather than hangs.
"""

import itertools
import threading
import time

import pytest

from la_edge import (Aligner, EngineUnavailableError, FatalDecodeError, GenerationParams, LaEdgeError,
                     StepFailedError)
from la_edge.runtime.engine import Engine

QUESTIONS = ["Why is the sky blue?", "What is a prime number?", "How do plants make food?", "What is rain?",
             "Name a fruit.", "Tell me about the moon.", "What is a cat?", "How do birds fly?"]
PRINCIPLES = ["Answer in French.", "Be extremely brief.", "Answer like a pirate.", "Use a bullet list.",
              "Explain it to a child.", "Be very formal.", "Mention the ocean.", "Answer in one sentence."]
PARAMS = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=16, ignore_eos=True)
JOIN_S = 180  # generous for a shared 2-core machine; a hang fails the test instead


class FaultyBackend:
    """The real backend, delegating everything; decode or logits_row raise where told."""

    def __init__(self, inner, fail_decode=None, fail_row=None):
        self.inner = inner
        self.fail_decode = fail_decode  # (call number, entries) -> exception to raise, or None
        self.fail_row = fail_row  # call number -> exception to raise, or None
        self.decodes = itertools.count(1)
        self.rows = itertools.count(1)
        self.failed_batch = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, entries):
        exc = self.fail_decode and self.fail_decode(next(self.decodes), entries)
        if exc is not None:
            self.failed_batch = list(entries)
            raise exc
        return self.inner.decode(entries)

    def logits_row(self, index):
        exc = self.fail_row and self.fail_row(next(self.rows))
        if exc is not None:
            raise exc
        return self.inner.logits_row(index)


class FlakyChooser:
    """The real chooser; call number `fail_at` raises."""

    def __init__(self, inner, fail_at):
        self.inner, self.fail_at, self.calls = inner, fail_at, itertools.count(1)
        self.path = inner.path

    def choose(self, *args):
        if next(self.calls) == self.fail_at:
            raise ValueError("injected chooser fault")
        return self.inner.choose(*args)


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512, max_requests=8) as aligner:
        yield aligner


@pytest.fixture(scope="module")
def pairs(la):
    return [la.prompts(q, p) for q, p in zip(QUESTIONS, PRINCIPLES)]


@pytest.fixture(scope="module")
def alone(la, pairs):
    return [la.generate(params=PARAMS, pair=p).tokens for p in pairs]


def run_concurrently(engine, pairs, params=PARAMS):
    """Submit and stream every pair from its own thread; [(tokens, error, finish_reason)] in pair order."""
    out = [None] * len(pairs)
    barrier = threading.Barrier(len(pairs))

    def worker(i):
        tokens, handle = [], None
        try:
            barrier.wait(30)
            handle = engine.submit(pairs[i], params)
            for ev in handle:
                tokens.append(ev.token)
            out[i] = (tokens, None, handle.finish_reason)
        except LaEdgeError as exc:
            out[i] = (tokens, exc, handle.finish_reason if handle else None)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(pairs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        engine.stop(5)  # ends the open requests so the threads go away
        pytest.fail(f"consumers still waiting after {JOIN_S}s")
    return out


def requests_in(entries):
    """Requests in a failed batch: a batch of decoders has two rows each; a prompt batch is one request."""
    return len(entries) // 2 if all(e.logits for e in entries) else 1


def check_isolated(la, engine, pairs, alone, out, n_failed, error_type):
    failed = [i for i, (_, err, _) in enumerate(out) if err is not None]
    assert len(failed) == n_failed, out
    for i, (tokens, err, reason) in enumerate(out):
        if err is None:
            assert tokens == alone[i] and reason == "length", i
        else:
            assert isinstance(err, error_type) and reason == "error", (i, err)
            assert tokens == alone[i][:len(tokens)], i  # what it streamed before the fault was right
    assert engine.alive and engine.failure is None
    assert engine.leaked_sequences() == []
    assert run_concurrently(engine, pairs[:1]) == [(alone[0], None, "length")]  # the next request works
    assert engine.leaked_sequences() == []
    assert engine.stop(10)


def first(pred):
    """A fault predicate that fires once: on the first decode call whose entries satisfy pred."""
    fired = []

    def fail(call, entries):
        if not fired and pred(entries):
            fired.append(call)
            return fail.exc
        return None
    return fail


def test_decode_error_in_a_batch_of_decoders_fails_only_those_requests(la, pairs, alone):
    fail = first(lambda entries: all(e.logits for e in entries) and len(entries) >= 6)  # >= 3 decoders
    fail.exc = RuntimeError("injected decode fault")
    backend = FaultyBackend(la.backend, fail_decode=fail)
    engine = Engine(backend, max_requests=8)
    engine.start()
    out = run_concurrently(engine, pairs)
    assert backend.failed_batch is not None
    n = requests_in(backend.failed_batch)
    assert 3 <= n < 8
    errors = [err for _, err, _ in out if err is not None]
    assert all(isinstance(e.cause, RuntimeError) and "injected" in str(e) for e in errors)
    check_isolated(la, engine, pairs, alone, out, n, StepFailedError)


def test_typed_decode_error_in_a_prompt_batch_keeps_its_type(la, pairs, alone):
    prompts_seen = []

    def pred(entries):  # the fourth prompt batch: one newcomer while others already decode
        if not all(e.logits for e in entries):
            prompts_seen.append(1)
        return len(prompts_seen) == 4 and not all(e.logits for e in entries)

    fail = first(pred)
    fail.exc = FatalDecodeError(-3, "injected fatal decode")
    backend = FaultyBackend(la.backend, fail_decode=fail)
    engine = Engine(backend, max_requests=8)
    engine.start()
    out = run_concurrently(engine, pairs)
    assert backend.failed_batch is not None and requests_in(backend.failed_batch) == 1
    assert [err.code for _, err, _ in out if err is not None] == [-3]
    check_isolated(la, engine, pairs, alone, out, 1, FatalDecodeError)


def test_logits_row_error_fails_only_the_request_that_reads_it(la, pairs, alone):
    backend = FaultyBackend(la.backend, fail_row=lambda call: OSError("injected row fault") if call == 41 else None)
    engine = Engine(backend, max_requests=8)
    engine.start()
    out = run_concurrently(engine, pairs)
    check_isolated(la, engine, pairs, alone, out, 1, StepFailedError)


def test_chooser_error_fails_only_its_request(la, pairs, alone):
    engine = Engine(la.backend, max_requests=8)
    engine.chooser = FlakyChooser(engine.chooser, fail_at=30)
    engine.start()
    out = run_concurrently(engine, pairs)
    (err,) = [err for _, err, _ in out if err is not None]
    assert isinstance(err.cause, ValueError)
    check_isolated(la, engine, pairs, alone, out, 1, StepFailedError)


def test_engine_thread_death_fails_every_waiter_at_once(la, pairs, alone):
    engine = Engine(la.backend, max_requests=8)
    real_plan, calls, died = engine.scheduler.plan, itertools.count(1), []

    def broken_plan():
        if next(calls) == 12:  # a bug outside the per-batch guards, mid-stream
            died.append(time.monotonic())
            raise KeyError("injected planner bug")
        return real_plan()

    engine.scheduler.plan = broken_plan
    engine.start()
    out = run_concurrently(engine, pairs)
    assert died and time.monotonic() - died[0] < 10
    assert all(isinstance(err, EngineUnavailableError) for _, err, _ in out), out
    assert all(reason in ("error", None) for _, _, reason in out)  # None: submitted after the death
    assert not engine.alive and isinstance(engine.failure, KeyError)
    assert isinstance(out[0][1].cause, KeyError)
    with pytest.raises(EngineUnavailableError):
        engine.submit(pairs[0], PARAMS)
    with pytest.raises(EngineUnavailableError):
        engine.start()
    assert engine.stop(5)
    assert la.engine.used_sequences() == []  # the dead engine cleared the shared cache
    assert la.generate(params=PARAMS, pair=pairs[1]).tokens == alone[1]


def test_waiters_are_released_quickly_when_the_thread_dies(la, pairs):
    engine = Engine(la.backend, max_requests=8)
    gate = threading.Event()
    real_plan = engine.scheduler.plan

    def broken_plan():
        if gate.is_set():
            raise RuntimeError("injected planner bug")
        return real_plan()

    engine.scheduler.plan = broken_plan
    engine.start()
    handle = engine.submit(pairs[0], PARAMS)
    it = iter(handle)
    next(it)
    gate.set()
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailableError):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 10
    assert not engine.alive and handle.finish_reason == "error"
    assert engine.stop(5)
