"""A negative prompt (classifier-free guidance): z = z_pos + (g - 1)(z_pos - z_neg), nucleus from z_pos."""

import math

import pytest

from la_edge import Aligner, GenerationParams, InvalidParameterError
from tests.integration.reference import aligned_greedy

PROMPT, NEG = "Tell me about dogs.", "Talk about cats."
GREEDY = GenerationParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512, max_branches=3) as aligner:
        yield aligner


def reference(la, bs, scale):
    """Two private contexts, the rule in float64: positive = the plain branch, reference = the negative."""
    neg, pos = (la.tokenize(b.text) for b in bs.branches)
    return aligned_greedy(la.backend.model.handle, pos, neg, scale - 1.0, GREEDY.max_tokens, la.backend.is_eog)


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_a_negative_text_equals_two_separate_contexts(la, scale):
    bs = la.negative(PROMPT, NEG, cfg_scale=scale)
    la.engine.clear_cache()  # a cold start: the shared prefix is decoded once and copied
    res = la.generate(params=GREEDY, branches=bs)
    assert res.tokens == reference(la, bs, scale) and len(res.tokens) >= 8
    assert res.prompts["principled"] == res.prompts["plain"] == la.prompts(PROMPT).principled
    assert [b["role"] for b in res.prompts["branches"]] == ["avoid", "plain"] and NEG in res.prompts["branches"][0]["text"]
    assert res.usage["shared_prefix_tokens"] > 0  # the prefix both share is stored once


def test_a_raw_negative_prompt_and_the_bos_default(la):
    raw = "Cats are the best animals. Let me tell you about cats:"
    bs = la.negative(PROMPT, negative_raw=raw, cfg_scale=2.0)
    assert bs.branches[0].text == raw and bs.branches[0].parts is None  # raw: no template
    assert la.generate(params=GREEDY, branches=bs).tokens == reference(la, bs, 2.0)
    bos = la.negative(PROMPT, cfg_scale=2.0)  # TabbyAPI's default: the BOS token alone
    assert bos.branches[0].text == la.backend.bos_eos_text()[0]
    assert la.generate(params=GREEDY, branches=bos).tokens == reference(la, bos, 2.0)


def test_scale_one_is_plain_decoding(la):
    bs = la.negative(PROMPT, NEG, cfg_scale=1.0)
    assert bs.k == 1
    assert la.generate(params=GREEDY, branches=bs).tokens == la.generate(PROMPT, params=GREEDY.with_(ratio=0)).tokens


def test_avoid_with_no_principle_is_the_same_rule(la):
    a = la.branches(PROMPT, [], avoid=[NEG], avoid_ratios=2.0)
    b = la.negative(PROMPT, NEG, cfg_scale=3.0)
    assert a == b


@pytest.mark.parametrize("scale", [0.5, 0.0, -1.0, 101.5, math.nan, math.inf, "2", True, 10 ** 400])
def test_bad_scales_name_cfg_scale(la, scale):
    with pytest.raises(InvalidParameterError, match="cfg_scale"):
        la.negative(PROMPT, NEG, cfg_scale=scale)


def test_bad_negatives_are_refused(la):
    with pytest.raises(InvalidParameterError, match="not both"):
        la.negative(PROMPT, NEG, negative_raw="x")
    with pytest.raises(InvalidParameterError, match="avoid_raw"):
        la.negative(PROMPT, negative_raw="")
    with pytest.raises(InvalidParameterError, match="cfg_scale"):
        la.negative(PROMPT, NEG, cfg_scale=10 ** 400)
    with pytest.raises(InvalidParameterError):
        la.negative(PROMPT, "   ")
    with pytest.raises(InvalidParameterError, match="max_branches"):
        la.generate(params=GREEDY, branches=la.branches(PROMPT, ["Be brief."], avoid=[NEG, "Be rude."]))
