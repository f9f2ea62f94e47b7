"""generate_step: one branch set decoded with no threads, the engine's own batches and tokens."""

import threading

import pytest

from la_edge import Aligner, GenerationParams, InvalidParameterError
from la_edge.backends import load_backend
from la_edge.decoding.combination import Combination
from la_edge.runtime.step import generate_step
from tests.integration.reference import aligned_greedy

PROMPT, PRINCIPLES = "Why is the sky blue?", ["Answer in French.", "Be brief."]
GREEDY = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=24)


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512, max_branches=4) as aligner:
        yield aligner


@pytest.fixture(scope="module")
def private(la):
    """A backend of its own (4 sequences): generate_step owns it, no engine thread near it."""
    b = load_backend(la.model_path, la.backend.name, la.backend.options.with_(n_seq_max=4))
    yield b
    b.close()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_generate_step_gives_the_engine_s_tokens(la, private, k):
    if k == 1:
        request, combo = la.prompts(PROMPT), Combination.plain()
        texts = [request.principled]
    elif k == 2:
        request = la.prompts(PROMPT, PRINCIPLES[0])
        combo, texts = Combination.linear_alignment(2.0), [request.principled, request.plain]
    else:
        request = la.branches(PROMPT, PRINCIPLES, ratios=2.0)
        combo, texts = request.combination, [b.text for b in request.branches]
    engine_tokens = [e.token for e in la.steps(request, GREEDY)[1]]
    threads = threading.active_count()
    tokens = [c.token for c in generate_step(private, [la.tokenize(t) for t in texts], combo, GREEDY)]
    assert tokens == engine_tokens and len(tokens) >= 8
    assert threading.active_count() == threads  # no thread started
    assert all(private.seq_pos_max(s) < 0 for s in range(4))  # its sequences are cleared at the end


def test_generate_step_equals_two_separate_contexts(la, private):
    pair = la.prompts(PROMPT, PRINCIPLES[0])
    tp, t0 = la.tokenize(pair.principled), la.tokenize(pair.plain)
    ours = [c.token for c in generate_step(private, [tp, t0], Combination.linear_alignment(2.0), GREEDY)]
    ref = aligned_greedy(la.backend.model.handle, tp, t0, 2.0, 24, la.backend.is_eog)
    assert ours == ref


def test_generate_step_checks_its_input(private):
    with pytest.raises(InvalidParameterError):
        next(generate_step(private, [[1, 2]], Combination.linear_alignment(2.0)))
    with pytest.raises(InvalidParameterError):
        next(generate_step(private, [[]]))
