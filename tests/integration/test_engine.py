"""The engine on the real embedded model against independent slow paths."""

import threading
import time

import numpy as np
import pytest

from la_edge import Aligner, EngineUnavailableError, GenerationParams
from la_edge.runtime.engine import Engine
from tests.integration.reference import SeparateContext, aligned_greedy

PROMPTS = [
    "Why is the sky blue?",
    "Give me three tips for learning to cook.",
    "What is a prime number?",
    "Write a short note to a friend about the weekend.",
    "How do plants make food?",
]
PRINCIPLE = "Answer like a pirate, in one short paragraph."


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=2048) as aligner:
        yield aligner


class RowSpy:
    """Wraps the real chooser and keeps a copy of every logits row it is given."""

    def __init__(self, chooser, n_vocab):
        self.inner, self.n_vocab, self.rows = chooser, n_vocab, []
        self.path = chooser.path

    def _arr(self, row):
        if row is None:
            return None
        if isinstance(row, np.ndarray):
            return row.copy()
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def choose(self, rows, combo, params, rng, history):
        self.rows.append(tuple(self._arr(r) for r in rows))
        return self.inner.choose(rows, combo, params, rng, history)


def test_batched_two_sequence_logits_equal_separate_contexts(la):
    pair = la.prompts(PROMPTS[0], PRINCIPLE)
    spy = RowSpy(la.engine.chooser, la.backend.n_vocab)
    la.engine.chooser = spy
    try:
        res = la.generate(params=GenerationParams(temperature=0.0, ratio=2.0, max_tokens=24), pair=pair)
    finally:
        la.engine.chooser = spy.inner
    tp, t0 = la.engine.tokenize_prompt(pair.principled), la.engine.tokenize_prompt(pair.plain)
    a, b = SeparateContext(la.backend.model.handle), SeparateContext(la.backend.model.handle)
    ref = [(a.eval(tp), b.eval(t0))]
    for tok in res.tokens[:-1]:
        ref.append((a.eval([tok]), b.eval([tok])))
    a.close()
    b.close()
    assert len(spy.rows) == len(ref) == len(res.tokens)
    for (zp, z0), (rp, r0) in zip(spy.rows, ref):
        # flash attention off: bit-identical on this CPU build
        np.testing.assert_array_equal(zp, rp)
        np.testing.assert_array_equal(z0, r0)


def test_ratio_zero_equals_plain_llama_cpp_greedy(la, model_path):
    from llama_cpp import Llama

    llm = Llama(model_path, n_ctx=2048, n_threads=2, verbose=False, flash_attn=False)
    try:
        for prompt in PROMPTS[:3]:
            pair = la.prompts(prompt, PRINCIPLE)
            ours = la.generate(params=GenerationParams(temperature=0.0, ratio=0.0, max_tokens=48), pair=pair)
            toks = la.engine.tokenize_prompt(pair.principled)
            theirs = []
            llm.reset()
            for t in llm.generate(toks, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                theirs.append(t)
                if llm._model.token_is_eog(t) if hasattr(llm._model, "token_is_eog") else t == llm.token_eos():
                    break
                if len(theirs) >= 48:
                    break
            assert ours.tokens == theirs, prompt
    finally:
        llm.close()


@pytest.mark.parametrize("ratio", [1.0, 2.0, 4.0])
def test_aligned_greedy_matches_two_context_numpy_reference(la, ratio):
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=64)
    for prompt in PROMPTS:
        pair = la.prompts(prompt, PRINCIPLE)
        ours = la.generate(params=params, pair=pair).tokens
        ref = aligned_greedy(la.backend.model.handle, la.engine.tokenize_prompt(pair.principled),
                             la.engine.tokenize_prompt(pair.plain), ratio, 64, la.backend.is_eog)
        assert ours == ref, (prompt, ratio)
        assert len(ours) >= 8


def test_seeded_sampling_repeats_and_seeds_differ(la):
    def run(seed):
        p = GenerationParams(temperature=0.9, ratio=2.0, seed=seed, max_tokens=40)
        return la.generate(PROMPTS[1], PRINCIPLE, p).tokens

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_principle_changes_the_answer_and_kv_is_freed(la):
    p = GenerationParams(temperature=0.0, max_tokens=40)
    plain = la.generate(PROMPTS[0], None, p)
    aligned = la.generate(PROMPTS[0], "Answer in French.", p)
    assert plain.text != aligned.text
    assert plain.prompts["plain"] is None and aligned.prompts["plain"] is not None
    assert la.engine.leaked_sequences() == []


def test_stop_string_spanning_tokens_ends_the_answer(la):
    p = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=64)
    full = la.generate(PROMPTS[0], PRINCIPLE, p).text
    words = full.split()
    assert len(words) > 4
    stop = words[2] + " " + words[3]  # two words: spans at least two tokens
    cut = la.generate(PROMPTS[0], PRINCIPLE, p.with_(stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert la.engine.leaked_sequences() == []


def test_stream_concatenates_to_generate_and_early_close_frees_kv(la):
    p = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=30)
    full = la.generate(PROMPTS[2], PRINCIPLE, p)
    chunks = list(la.stream(PROMPTS[2], PRINCIPLE, p))
    assert "".join(c.text for c in chunks) == full.text
    assert chunks[-1].finish_reason == full.finish_reason
    it = la.stream(PROMPTS[2], PRINCIPLE, p)
    next(it)
    it.close()
    assert la.engine.leaked_sequences() == []


def test_raw_prompt_mode(la):
    res = la.generate_raw("Q: Name a colour. Be brief.\nA:", "Q: Name a colour.\nA:",
                          GenerationParams(temperature=0.0, max_tokens=8))
    assert res.prompts == {"principled": "Q: Name a colour. Be brief.\nA:", "plain": "Q: Name a colour.\nA:"}
    assert res.tokens


class BlockingBackend:
    """The real backend; decode call number `block_at` waits (bounded) until `release` is set."""

    def __init__(self, inner, block_at):
        self.inner, self.block_at, self.calls = inner, block_at, 0
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, entries):
        self.calls += 1
        if self.calls == self.block_at:
            self.entered.set()
            self.release.wait(60)
        return self.inner.decode(entries)


def drain(handle, timeout=120):
    """The handle's tokens, read in a thread so that a hang fails the test."""
    out = []
    t = threading.Thread(target=lambda: out.extend(e.token for e in handle), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "consumer still waiting"
    return out


def test_cancel_during_decode_then_submit_waits_for_the_freed_sequences(la):
    """The race that crashed the server: ids freed after the decode, a newcomer admitted before it."""
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=16)
    first, second = la.prompts(PROMPTS[0], PRINCIPLE), la.prompts(PROMPTS[1], PRINCIPLE)
    alone = la.generate(params=params, pair=second).tokens
    backend = BlockingBackend(la.backend, block_at=3)  # the first request's first decode step
    engine = Engine(backend, max_requests=1)  # one request: both sequence ids are in use
    engine.start()
    try:
        h1 = engine.submit(first, params)
        assert backend.entered.wait(60)
        h1.cancel()
        assert h1.finish_reason == "cancelled" and engine.n_active == 0
        h2 = engine.submit(second, params)  # before the fix: IndexError, pop from an empty free list
        assert engine.n_queued == 1  # waits for the sequences the decode in flight still uses
        backend.release.set()
        assert drain(h2) == alone and h2.finish_reason in ("stop", "length")
        assert len(drain(h1)) <= 1  # the token sampled before the cancel, if any; then it ends
        assert engine.leaked_sequences() == [] and engine.n_active == engine.n_queued == 0
    finally:
        backend.release.set()
        assert engine.stop(10)


def test_stop_waits_for_the_decode_in_flight_and_cancels_open_requests(la):
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=16)
    backend = BlockingBackend(la.backend, block_at=3)
    engine = Engine(backend, max_requests=1)
    engine.start()
    h1 = engine.submit(la.prompts(PROMPTS[0], PRINCIPLE), params)
    assert backend.entered.wait(60)
    h2 = engine.submit(la.prompts(PROMPTS[1], PRINCIPLE), params)  # queued behind h1
    t0 = time.monotonic()
    assert engine.stop(timeout=0.3) is False  # bounded: the decode is still in flight
    assert time.monotonic() - t0 < 5 and engine.decode_in_flight and not engine.alive
    assert h1.finish_reason == h2.finish_reason == "cancelled"
    with pytest.raises(EngineUnavailableError):
        engine.submit(la.prompts(PROMPTS[2]), params)
    backend.release.set()
    assert engine.stop(10) is True and not engine.decode_in_flight
    assert drain(h2) == [] and len(drain(h1)) <= 1
    assert engine.leaked_sequences() == []


def test_consumer_driven_threads_share_one_runner(la):
    """Without start(), every consumer drives steps itself; none decodes while another does."""
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=12)
    pair = la.prompts(PROMPTS[3], PRINCIPLE)
    alone = la.generate(params=params, pair=pair).tokens
    handles = [la.engine.submit(pair, params) for _ in range(2)]  # max_requests=1: one waits
    outs = [None, None]

    def read(i):
        outs[i] = [e.token for e in handles[i]]

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert outs == [alone, alone]
    assert la.engine.leaked_sequences() == []


def test_cancel_from_inside_the_engines_locked_code_does_not_deadlock(la):
    """A finalizer (a collected generator's `finally: cancel()`) can run in the engine thread while it
    holds the lock; the cancel is queued and done at the next locked section instead of deadlocking."""
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=16)
    pair = la.prompts(PROMPTS[2], PRINCIPLE)
    alone = la.generate(params=params, pair=pair).tokens
    engine = Engine(la.backend, max_requests=1)
    real_plan, victim = engine.scheduler.plan, []

    def plan_with_finalizer():
        if victim:
            victim.pop().cancel()  # what a garbage-collected stream does, here under the lock
        return real_plan()

    engine.scheduler.plan = plan_with_finalizer
    engine.start()
    try:
        h1 = engine.submit(pair, params)
        it = iter(h1)
        first = next(it).token
        victim.append(h1)
        rest = drain(h1, timeout=60)
        assert h1.finish_reason == "cancelled" and [first] + rest != alone
        assert engine.alive and engine.leaked_sequences() == []
        assert drain(engine.submit(pair, params)) == alone
    finally:
        assert engine.stop(10)
