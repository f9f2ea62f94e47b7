"""The 1.5B witness (Qwen2.5-Coder-1.5B-Instruct Q4): the engine's exactness at the size people run."""

import pytest

from la_edge import Aligner, GenerationParams
from tests.integration.reference import aligned_gaps, aligned_greedy

pytestmark = pytest.mark.witness
GREEDY = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=12)


@pytest.fixture(scope="module")
def la(witness_path):
    with Aligner.load(witness_path, n_ctx=512, max_branches=2) as aligner:
        yield aligner


def assert_reference(la, tp, t0, ratio, got):
    """The engine's greedy tokens against two private contexts in float64. This model's Q4_K kernels
    round by a row's place in a decode call (AVX-512 builds): where the paths part at a near-tie,
    every engine token must be the reference's pick or within a hair of it, teacher-forced; or sit
    on the plausibility nucleus's edge (inside it when top-p is 0.81 instead of 0.8)."""
    ref = aligned_greedy(la.backend.model.handle, tp, t0, ratio, GREEDY.max_tokens, la.backend.is_eog)
    if got == ref:
        return
    gaps = aligned_gaps(la.backend.model.handle, tp, t0, ratio, got)
    edge = aligned_gaps(la.backend.model.handle, tp, t0, ratio, got, p_m=0.81)
    assert all(g < 0.5 or e < 0.5 for g, e in zip(gaps, edge)) and sum(g > 0 for g in gaps) <= 2, (gaps, edge)


def test_the_witness_is_the_model_the_issue_names(la):
    from la_edge.backends.gguf_meta import gguf_metadata

    assert gguf_metadata(la.model_path)["general.name"] == "Qwen2.5 Coder 1.5B Instruct GGUF"


def test_aligned_equals_two_separate_contexts_on_the_witness(la):
    pair = la.prompts("Why is the sky blue?", "Answer in one short sentence.")
    res = la.generate(params=GREEDY, pair=pair)
    assert len(res.tokens) >= 6
    assert_reference(la, la.tokenize(pair.principled), la.tokenize(pair.plain), 2.0, res.tokens)
    assert la.engine.leaked_sequences() == []


def test_a_negative_prompt_on_the_witness(la):
    bs = la.negative("Name a pet.", "Talk about cats.", cfg_scale=3.0)
    res = la.generate(params=GREEDY, branches=bs)
    neg, pos = (la.tokenize(b.text) for b in bs.branches)
    assert_reference(la, pos, neg, 2.0, res.tokens)
