"""The NumPy reference against hand-written vectors."""

import numpy as np
import pytest

from la_edge import GenerationParams, InvalidParameterError, NonFiniteLogitsError
from la_edge.decoding import sampling
from la_edge.decoding.combination import Combination
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import base_row, choose_rows, guided, jsd_bits, log_exact, plausibility_mask
from la_edge.errors import AllTokensBannedError

f32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
PLAIN = Combination.plain()
LA2 = Combination.linear_alignment(2.0)  # GenerationParams' default ratio


def test_combination_formula():
    zp, z0 = f32(1.0, 2.0, -1.0), f32(0.5, 3.0, -1.0)
    ids = np.arange(3)
    for r, want in [(2.0, f32(2.0, 0.0, -1.0)), (0.0, zp)]:  # z = z_P + r (z_P - z_0)
        la = Combination.linear_alignment(r)
        np.testing.assert_array_equal(guided(base_row((zp, z0), la), (zp, z0), la, ids), want)


def test_one_path_for_every_combination():
    # Linear Alignment is choose_rows with Combination.linear_alignment(r): no pair-only shortcuts.
    for name in ("combine", "choose_token"):
        assert not hasattr(sampling, name), name
    assert not hasattr(Combination, "branch_weights")


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
    z = zp + np.float32(2.0) * (zp - z0)
    assert int(np.argmax(z)) == 2
    assert choose_rows((zp, z0), LA2, p).token == 1


def test_ratio_zero_is_principled_greedy():
    zp, z0 = f32(1.0, 3.0, 2.0), f32(5.0, 0.0, 0.0)
    assert choose_rows((zp, z0), Combination.linear_alignment(0.0), GenerationParams(temperature=0.0)).token == 1


def test_nan_and_posinf_are_errors():
    p = GenerationParams(temperature=0.0)
    with pytest.raises(NonFiniteLogitsError):
        choose_rows((f32(0.0, np.nan), f32(0.0, 0.0)), LA2, p)
    with pytest.raises(NonFiniteLogitsError):
        choose_rows((f32(0.0, 1.0), f32(np.inf, 0.0)), LA2, p)


def test_seeded_sampling_repeats_and_seeds_differ():
    rs = np.random.default_rng(0)
    zp = rs.normal(size=500).astype(np.float32) * 2
    z0 = zp + rs.normal(size=500).astype(np.float32)
    p = GenerationParams(temperature=1.0, plausibility_top_p=0.95)

    def run(seed):
        rng = SplitMix64(seed)
        return [choose_rows((zp, z0), LA2, p, rng).token for _ in range(40)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampling_frequencies_follow_softmax_over_the_nucleus():
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=0.8)
    rng = SplitMix64(7)
    counts = np.bincount([choose_rows((zp,), PLAIN, p, rng).token for _ in range(4000)], minlength=3)
    assert counts[2] == 0  # outside the nucleus
    assert abs(counts[0] / 4000 - 0.625) < 0.03  # 0.5 / (0.5 + 0.3)


def test_top_k_one_is_greedy_and_min_p_filters():
    zp = f32(0.0, 1.0, 0.9, -3.0)
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=1.0, top_k=1)
    assert {choose_rows((zp,), PLAIN, p, SplitMix64(s)).token for s in range(20)} == {1}
    p = GenerationParams(temperature=1.0, ratio=0.0, plausibility_top_p=1.0, min_p=0.5)
    assert {choose_rows((zp,), PLAIN, p, SplitMix64(s)).token for s in range(50)} == {1, 2}


def test_repeat_penalty_moves_mass_off_seen_tokens():
    zp = f32(2.0, 1.9, -5.0)
    p = GenerationParams(temperature=0.0001, ratio=0.0, plausibility_top_p=1.0, plausibility_temperature=1.0,
                         repeat_penalty=2.0)
    assert choose_rows((zp,), PLAIN, p, SplitMix64(0), history=[0]).token == 1


def test_greedy_applies_repeat_penalty_before_argmax():
    zp = f32(2.0, 1.9, -5.0)
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, repeat_penalty=2.0)
    assert choose_rows((zp,), PLAIN, p).token == 0
    assert choose_rows((zp,), PLAIN, p, history=[0]).token == 1  # 2.0 / 2 < 1.9
    assert choose_rows((zp,), PLAIN, p.with_(repeat_penalty=1.0), history=[0]).token == 0


def test_greedy_applies_frequency_and_presence_penalties():
    zp = f32(1.0, 0.8, 0.5)
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, frequency_penalty=0.15)
    assert choose_rows((zp,), PLAIN, p, history=[0]).token == 0  # 0.85 > 0.8
    assert choose_rows((zp,), PLAIN, p, history=[0, 0]).token == 1  # 0.7 < 0.8
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=1.0, presence_penalty=0.3)
    assert choose_rows((zp,), PLAIN, p, history=[0]).token == 1
    assert choose_rows((zp,), PLAIN, p.with_(repeat_last_n=1), history=[0, 2]).token == 0  # 0 left the window


def test_penalty_free_greedy_ignores_history():
    zp, z0 = np.log(f32(0.5, 0.3, 0.2)), np.log(f32(0.6, 0.1, 0.3))
    p = GenerationParams(temperature=0.0, ratio=2.0, plausibility_top_p=0.9, top_logprobs=3)
    assert choose_rows((zp, z0), LA2, p, history=[0, 1, 1, 2]) == choose_rows((zp, z0), LA2, p)


def test_greedy_penalties_act_on_the_aligned_logits_inside_the_unpenalised_nucleus():
    # z_P probs 0.5, 0.3, 0.2 with T_m = 1, p_m = 0.8: the nucleus is {0, 1} before any penalty.
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=0.8, repeat_penalty=10.0, top_logprobs=2)
    c = choose_rows((zp,), PLAIN, p, history=[0])
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
    toks = {choose_rows((zp, z0), Combination.linear_alignment(100.0), p, SplitMix64(s)).token for s in range(30)}
    assert toks == {0, 1}


def test_logprobs_are_normalised_over_the_nucleus():
    zp = np.log(f32(0.5, 0.3, 0.2))
    p = GenerationParams(temperature=0.0, ratio=0.0, plausibility_top_p=0.8, top_logprobs=2)
    c = choose_rows((zp,), PLAIN, p)
    assert c.token == 0 and abs(c.logprob - np.log(0.625)) < 1e-6
    assert [t for t, _ in c.top] == [0, 1]


# ---- K rows and a Combination ----

def test_jsd_of_hand_computed_vectors():
    # p = (1/2, 1/2), q = (1, 0): JSD = H(3/4, 1/4) - (H(p) + H(q)) / 2 = 0.8112781244591328 - 1/2 bits.
    half = np.log(f32(0.5, 0.5))
    assert abs(jsd_bits(half, f32(0.0, -np.inf), 1.0) - 0.3112781244591328) < 1e-15
    assert jsd_bits(f32(0.0, -np.inf), f32(-np.inf, 0.0), 1.0) == 1.0  # disjoint supports
    assert jsd_bits(half, half, 1.0) < 1e-15
    assert jsd_bits(f32(-np.inf, -np.inf), half, 1.0) == 1.0  # undefined: keep the fixed ratio
    # Temperature sharpens both distributions first: softmax((0, -1) / 0.5) vs uniform.
    p = np.exp(np.array([0.0, -2.0])) / np.exp(np.array([0.0, -2.0])).sum()
    m = (p + 0.5) / 2
    want = 0.5 * (np.sum(p * np.log2(p / m)) + np.sum(0.5 * np.log2(0.5 / m)))
    assert abs(jsd_bits(f32(0.0, -1.0), f32(0.0, 0.0), 0.5) - want) < 1e-15


def test_log_exact_is_accurate():
    x = np.concatenate([np.random.default_rng(0).random(100000) * 4, [5e-324, 1e-310, 2.0 ** -1022, 1.0, 2.0,
                                                                      np.nextafter(1.0, 0), 1e300]])
    got, want = log_exact(x), np.log(x)
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))  # within 1 ulp
    assert log_exact(np.array([1.0]))[0] == 0.0


def test_adaptive_scale_multiplies_every_guide():
    zp, z0 = np.log(f32(0.6, 0.3, 0.1)), np.log(f32(0.2, 0.5, 0.3))
    p = GenerationParams(temperature=0.0, plausibility_top_p=1.0, top_logprobs=3)
    c = choose_rows((zp, z0), Combination((1.0, 0.0), (2.0, 0.0), 1, adaptive=True), p)
    s = jsd_bits(zp, z0, p.mask_temperature)
    assert c.ratio_scale == s and 0.0 < s < 1.0
    z = zp + np.float32(2.0 * s) * (zp - z0)
    assert c.token == int(np.argmax(z))
    assert choose_rows((zp, z0), LA2, p).ratio_scale == 1.0


def test_three_rows_mix_the_base_and_guide_from_plain():
    a, b, plain = f32(2.0, 0.0, 1.0, -9.0), f32(0.0, 2.0, 1.0, -9.0), f32(0.0, 0.0, 0.0, 0.0)
    p = GenerationParams(temperature=0.0, plausibility_top_p=0.99)
    combo = Combination.compose((1.0, 1.0))  # b = (1, 1, 1, -9); z = b + 0.5(a - plain) + 0.5(b - plain)
    assert np.array_equal(base_row((a, b, plain), combo), f32(1.0, 1.0, 1.0, -9.0))
    c = choose_rows((a, b, plain), combo, p)
    assert c.nucleus_size == 3 and c.token == 0  # 2, 2, 2: ties break by id
    c = choose_rows((a, b, plain), Combination.compose((1.0, 3.0)), p)
    assert c.token == 1  # the second principle pulls harder
    avoid = f32(0.0, 5.0, 0.0, 0.0)
    c = choose_rows((a, b, avoid, plain), Combination.compose((1.0, 3.0), avoid_ratios=(1.0,)), p)
    assert c.token == 2  # z = (1, 6 - 5, 3.25): pushed away from token 1


def test_rows_must_match_the_combination():
    p = GenerationParams(temperature=0.0)
    with pytest.raises(InvalidParameterError, match="2 logits rows for a combination of 3"):
        choose_rows((f32(0.0), f32(0.0)), Combination.compose((1.0, 1.0)), p)
    with pytest.raises(InvalidParameterError, match="same length"):
        choose_rows((f32(0.0), f32(0.0, 1.0)), Combination.linear_alignment(1.0), p)


def test_non_finite_errors_name_the_branch():
    p = GenerationParams(temperature=0.0)
    rows = (f32(0.0, 1.0), f32(0.0, 1.0), f32(np.nan, 1.0))
    with pytest.raises(NonFiniteLogitsError, match=r"branch 2 \(plain\)"):
        choose_rows(rows, Combination.compose((1.0, 1.0)), p)
    with pytest.raises(NonFiniteLogitsError, match=r"plain"):
        choose_rows((f32(0.0, 1.0), f32(np.inf, 0.0)), LA2, p)
    # float32 weights summing just above 1 over rows at the float32 maximum overflow the base row.
    mix = (0.1259088322702662, 0.3272475471886114, 0.32187400796042553, 0.22496961258069686)
    big = f32(np.finfo(np.float32).max, 0.0)
    with pytest.raises(NonFiniteLogitsError, match="mixed base row"):
        choose_rows((big,) * 4, Combination(mix, (0.0,) * 4), p)


# ---- -inf outside the base row bans the token ----


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_minus_inf_in_the_plain_row_bans_the_token(temperature):
    # z_P + r (z_P - z_0) at z_0 = -inf was +inf: the banned token was forced.
    zp, z0 = f32(1.0, 0.9, 0.5), f32(0.0, -np.inf, 0.0)
    p = GenerationParams(temperature=temperature, plausibility_top_p=1.0, top_logprobs=3)
    for seed in range(30):
        c = choose_rows((zp, z0), LA2, p, SplitMix64(seed))
        assert c.token != 1 and np.isfinite(c.logprob)
        assert 1 not in [t for t, _ in c.top] and c.nucleus_size == 3


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_minus_inf_in_an_avoid_row_bans_the_token(temperature):
    p_row, plain = f32(1.0, 0.9, 0.5), f32(0.0, 0.0, 0.0)
    avoid = f32(0.0, 0.0, -np.inf)  # "avoid token 2 infinitely little" was - s * -inf = +inf
    p = GenerationParams(temperature=temperature, plausibility_top_p=1.0)
    combo = Combination.compose((1.0,), avoid_ratios=(1.5,))
    assert {choose_rows((p_row, avoid, plain), combo, p, SplitMix64(s)).token for s in range(30)} <= {0, 1}


def test_minus_inf_in_a_negatively_guiding_row_bans_the_token():
    a, b, plain = f32(1.0, 0.5, 0.2), f32(-np.inf, 0.0, 0.0), f32(0.0, 0.0, 0.0)
    combo = Combination((0.5, 0.0, 0.5), (1.0, -0.5, 0.0), 2)  # b guides with weight -0.5: -0.5 * -inf = +inf
    assert choose_rows((a, b, plain), combo, GenerationParams(temperature=0.0)).token == 1


def test_a_row_that_does_not_guide_bans_nothing():
    zp, z0 = f32(1.0, 0.9, 0.5), f32(-np.inf, 0.0, 0.0)
    p = GenerationParams(temperature=0.0, plausibility_top_p=1.0)
    assert choose_rows((zp, z0), Combination.linear_alignment(0.0), p).token == 0  # r = 0: z_0 has no weight
    adaptive = Combination((1.0, 0.0), (0.0, 0.0), 1, adaptive=True)
    assert choose_rows((zp, z0), adaptive, p).token == 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_nucleus_token_banned_is_a_typed_error(temperature):
    p = GenerationParams(temperature=temperature, plausibility_top_p=0.5)
    zp, z0 = f32(3.0, 0.0, 0.0), f32(-np.inf, 0.0, 0.0)  # the nucleus is {0}, and z_0 bans it
    with pytest.raises(AllTokensBannedError, match="nucleus"):
        choose_rows((zp, z0), LA2, p, SplitMix64(1))
    with pytest.raises(AllTokensBannedError):
        choose_rows((zp, f32(-np.inf, -np.inf, -np.inf)), LA2, p.with_(plausibility_top_p=1.0), SplitMix64(1))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_all_minus_inf_base_row_is_a_typed_error(temperature):
    p = GenerationParams(temperature=temperature)
    masked = f32(-np.inf, -np.inf, -np.inf)
    with pytest.raises(AllTokensBannedError, match="base row"):
        choose_rows((masked,), Combination.plain(), p, SplitMix64(1))
    with pytest.raises(AllTokensBannedError, match="base row"):
        choose_rows((masked, f32(0.0, 0.0, 0.0)), LA2, p, SplitMix64(1))
    with pytest.raises(AllTokensBannedError, match="base row"):  # mixed: each token banned by one row
        choose_rows((f32(-np.inf, 0.0), f32(0.0, -np.inf), f32(0.0, 0.0)), Combination.compose((1.0, 1.0)), p,
                    SplitMix64(1))
    assert issubclass(AllTokensBannedError, NonFiniteLogitsError)
