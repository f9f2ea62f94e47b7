"""The NumPy reference against hand-written vectors."""

import numpy as np
import pytest

from la_edge import GenerationParams, NonFiniteLogitsError
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import choose_token, combine, plausibility_mask

f32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731


def test_combination_formula():
    zp, z0 = f32(1.0, 2.0, -1.0), f32(0.5, 3.0, -1.0)
    np.testing.assert_array_equal(combine(zp, z0, 2.0), f32(2.0, 0.0, -1.0))
    np.testing.assert_array_equal(combine(zp, z0, 0.0), zp)


def test_mask_keeps_mass_strictly_above_below_p():
    # probs 0.5, 0.3, 0.2 (log-space): mass above = 0, 0.5, 0.8
    zp = np.log(f32(0.5, 0.3, 0.2))
    assert list(plausibility_mask(zp, 0.8, 1.0)) == [0, 1]
    assert list(plausibility_mask(zp, 0.81, 1.0)) == [0, 1, 2]
    assert list(plausibility_mask(zp, 0.5, 1.0)) == [0]
    assert list(plausibility_mask(zp, 0.01, 1.0)) == [0]  # at least one token


def test_mask_ties_break_by_token_id():
    zp = f32(0.0, 0.0, 0.0, 0.0)  # 0.25 each; p=0.5 keeps two, the lowest ids
    assert list(plausibility_mask(zp, 0.5, 1.0)) == [0, 1]


def test_mask_excludes_banned_tokens_even_at_p1():
    zp = f32(0.0, -np.inf, 0.0)
    assert sorted(plausibility_mask(zp, 1.0, 1.0)) == [0, 2]


def test_greedy_picks_aligned_argmax_inside_the_nucleus():
    # z = zp + 2(zp - z0): token 2 has the largest z but lies outside the principled nucleus.
    zp = np.log(f32(0.6, 0.3, 0.1))
    z0 = np.log(f32(0.7, 0.1, 0.001))
    p = GenerationParams(temperature=0.0, ratio=2.0, plausibility_top_p=0.8)
    z = combine(zp, z0, 2.0)
    assert int(np.argmax(z)) == 2
    assert choose_token(zp, z0, p).token == 1


def test_ratio_zero_is_principled_greedy():
    zp, z0 = f32(1.0, 3.0, 2.0), f32(5.0, 0.0, 0.0)
    assert choose_token(zp, z0, GenerationParams(temperature=0.0, ratio=0.0)).token == 1


def test_nan_and_posinf_are_errors():
    p = GenerationParams(temperature=0.0)
    with pytest.raises(NonFiniteLogitsError):
        choose_token(f32(0.0, np.nan), f32(0.0, 0.0), p)
    with pytest.raises(NonFiniteLogitsError):
        choose_token(f32(0.0, 1.0), f32(np.inf, 0.0), p)


def test_seeded_sampling_repeats_and_seeds_differ():
    rs = np.random.default_rng(0)
    zp = rs.normal(size=500).astype(np.float32) * 2
    z0 = zp + rs.normal(size=500).astype(np.float32)
    p = GenerationParams(temperature=1.0, plausibility_top_p=0.95)

    def run(seed):
        rng = SplitMix64(seed)
        return [choose_token(zp, z0, p, rng).token for _ in range(40)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampling_frequencies_follow_softmax_over_the_nucleus():
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=0.8)
    rng = SplitMix64(7)
    counts = np.bincount([choose_token(zp, None, p, rng).token for _ in range(4000)], minlength=3)
    assert counts[2] == 0  # outside the nucleus
    assert abs(counts[0] / 4000 - 0.625) < 0.03  # 0.5 / (0.5 + 0.3)


def test_top_k_one_is_greedy_and_min_p_filters():
    zp = f32(0.0, 1.0, 0.9, -3.0)
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=1.0, top_k=1)
    assert {choose_token(zp, None, p, SplitMix64(s)).token for s in range(20)} == {1}
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=1.0, min_p=0.5)
    assert {choose_token(zp, None, p, SplitMix64(s)).token for s in range(50)} == {1, 2}


def test_repeat_penalty_moves_mass_off_seen_tokens():
    zp = f32(2.0, 1.9, -5.0)
    p = GenerationParams(temperature=0.0001, ratio=0.0, plausibility_top_p=1.0, plausibility_temperature=1.0,
                         repeat_penalty=2.0)
    assert choose_token(zp, None, p, SplitMix64(0), history=[0]).token == 1


def test_greedy_applies_repeat_penalty_before_argmax():
    zp = f32(2.0, 1.9, -5.0)
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, repeat_penalty=2.0)
    assert choose_token(zp, None, p).token == 0
    assert choose_token(zp, None, p, history=[0]).token == 1  # 2.0 / 2 < 1.9
    assert choose_token(zp, None, p.with_(repeat_penalty=1.0), history=[0]).token == 0


def test_greedy_applies_frequency_and_presence_penalties():
    zp = f32(1.0, 0.8, 0.5)
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, frequency_penalty=0.15)
    assert choose_token(zp, None, p, history=[0]).token == 0  # 0.85 > 0.8
    assert choose_token(zp, None, p, history=[0, 0]).token == 1  # 0.7 < 0.8
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, presence_penalty=0.3)
    assert choose_token(zp, None, p, history=[0]).token == 1
    assert choose_token(zp, None, p.with_(repeat_last_n=1), history=[0, 2]).token == 0  # 0 left the window


def test_penalty_free_greedy_ignores_history():
    zp, z0 = np.log(f32(0.5, 0.3, 0.2)), np.log(f32(0.6, 0.1, 0.3))
    p = GenerationParams(temperature=0.0, ratio=2.0, plausibility_top_p=0.9, top_logprobs=3)
    assert choose_token(zp, z0, p, history=[0, 1, 1, 2]) == choose_token(zp, z0, p)


def test_greedy_penalties_act_on_the_aligned_logits_inside_the_unpenalised_nucleus():
    # z_P probs 0.5, 0.3, 0.2 with T_m = 1, p_m = 0.8: the nucleus is {0, 1} before any penalty.
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=0.8, repeat_penalty=10.0, top_logprobs=2)
    c = choose_token(zp, None, p, history=[0])
    assert c.token == 1 and c.nucleus_size == 2  # token 2 would win unmasked, but stays outside
    # logprobs describe the penalised aligned distribution, as when sampling.
    z = f32(np.log(0.5) * 10.0, np.log(0.3))
    assert abs(c.logprob - float(z[1] - np.logaddexp(z[0], z[1]))) < 1e-6
    assert [t for t, _ in c.top] == [1, 0]


def test_all_minus_inf_aligned_falls_back_to_principled_nucleus():
    # z0 = +huge makes every aligned logit -inf in float32; the draw falls back to softmax(z_P).
    zp = f32(0.0, 0.0)
    z0 = f32(3e38, 3e38)
    p = GenerationParams(temperature=1.0, ratio=100.0, plausibility_top_p=1.0)
    toks = {choose_token(zp, z0, p, SplitMix64(s)).token for s in range(30)}
    assert toks == {0, 1}


def test_logprobs_are_normalised_over_the_nucleus():
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=0.8, top_logprobs=2)
    c = choose_token(zp, None, p)
    assert c.token == 0 and abs(c.logprob - np.log(0.625)) < 1e-6
    assert [t for t, _ in c.top] == [0, 1]
