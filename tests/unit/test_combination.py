"""Combination: validation tables, the named constructors, and K = 2 bit-identity with Linear Alignment."""

import math

import numpy as np
import pytest

from la_edge.decoding.combination import MAX_BRANCHES, Combination
from la_edge.decoding.params import GenerationParams
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import base_row, choose_rows, guided, plausibility_mask
from la_edge.errors import InvalidParameterError

F32 = np.float32


@pytest.mark.parametrize("kwargs, message", [
    (dict(mix=(), guide=()), "1 to 16 branches"),
    (dict(mix=(1.0,) + (0.0,) * MAX_BRANCHES, guide=(0.0,) * (MAX_BRANCHES + 1)), "1 to 16 branches"),
    (dict(mix=(1.0, 0.0), guide=(0.0,)), "one per branch"),
    (dict(mix=(1.5, -0.5), guide=(0.0, 0.0)), r"mix\[1\] must be 0 or in"),
    (dict(mix=(1.0, 1e-40), guide=(0.0, 0.0)), r"mix\[1\] must be 0 or in"),
    (dict(mix=(1e308, 1e308), guide=(0.0, 0.0)), r"mix\[0\] must be 0 or in \[1e-30, 1\]"),
    (dict(mix=(0.5, 0.4), guide=(0.0, 0.0)), "sum to 1"),
    (dict(mix=(float("nan"),), guide=(0.0,)), r"mix\[0\] must be a finite number"),
    (dict(mix=(1.0,), guide=(float("inf"),)), r"guide\[0\] must be a finite number"),
    (dict(mix=(1.0,), guide=(True,)), r"guide\[0\] must be a finite number"),
    (dict(mix="1", guide=(0.0,)), "sequence of numbers"),
    (dict(mix=(1.0, 0.0), guide=(2.0, 0.0), ref=2), r"ref must be a branch index in \[0, 1\]"),
    (dict(mix=(1.0, 0.0), guide=(2.0, 0.0), ref=True), "ref must be a branch index"),
    (dict(mix=(1.0, 0.0), guide=(2.0, 1.0), ref=1), r"guide\[ref\] must be 0"),
    (dict(mix=(1.0, 0.0), guide=(2.0, 0.0)), "need ref"),
    (dict(mix=(1.0, 0.0), guide=(2.0, 0.0), ref=1, adaptive=1), "adaptive must be true or false"),
    (dict(mix=(1.0,), guide=(0.0,), adaptive=True), "adaptive needs ref"),
])
def test_invalid_combinations_say_how_to_fix(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        Combination(**kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda: Combination.compose((2.0, 1.0), (0.0, 0.0)), "weight"),
    (lambda: Combination.compose((2.0, 1.0), (1.0, -0.5)), "weight"),
    (lambda: Combination.compose((2.0, 1.0), (1.0,)), "1 weights for 2 principles"),
    (lambda: Combination.compose(()), "at least one principle"),
    (lambda: Combination.compose((200.0,)), r"ratios\[0\] must be in \[-1, 100\]"),
    (lambda: Combination.compose((2.0,), avoid_ratios=(-1.0,)), r"avoid_ratios\[0\] must be in \[0, 100\]"),
    (lambda: Combination.linear_alignment(float("nan")), "ratio must be a finite number"),
    (lambda: Combination.linear_alignment(-2.0), r"ratio must be in \[-1, 100\]"),
])
def test_invalid_constructor_arguments(call, message):
    with pytest.raises(InvalidParameterError, match=message):
        call()


@pytest.mark.parametrize("weights, mix", [
    ((1e308, 1e308), (0.5, 0.5)),
    ((1.7976931348623157e308, 1.7976931348623157e308 / 4), (0.8, 0.2)),
    ((1e308, 0.0, 1e308, 1e308), (1 / 3, 0.0, 1 / 3, 1 / 3)),
])
def test_compose_normalises_huge_weights_without_overflow(weights, mix):
    c = Combination.compose((2.0,) * len(weights), weights)
    assert c.mix[:len(weights)] == pytest.approx(mix, rel=1e-15)
    assert c.guide[:len(weights)] == pytest.approx(tuple(2.0 * m for m in mix), rel=1e-15)


@pytest.mark.parametrize("weights", [(1.0, 3.0), (0.1, 0.2, 0.7), (3.0, 1.0, 1.0), (1e-300, 3e-300),
                                     (5e-324, 5e-324), (1e300, 7e299), (1.0, 1e-29)])
def test_compose_normalises_exactly_like_dividing_by_the_sum(weights):
    total = math.fsum(weights)
    assert Combination.compose((1.0,) * len(weights), weights).mix[:len(weights)] == tuple(w / total for w in weights)


@pytest.mark.parametrize("weights, bad", [((1.0, 1e-31), 1), ((1e300, 1e-300), 1), ((1e-40, 1.0, 1.0), 0),
                                          ((1.0, 5e-324), 1)])
def test_compose_refuses_a_weight_that_would_round_away_naming_weights_i(weights, bad):
    with pytest.raises(InvalidParameterError, match=rf"^weights\[{bad}\] .*set it to 0") as err:
        Combination.compose((2.0,) * len(weights), weights)
    assert "mix" not in str(err.value)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        Combination((0.5,), (0.0,))


def test_weights_within_tolerance_are_accepted_and_stored_as_floats():
    c = Combination((0.1, 0.2, 0.7 + 5e-10), (0, 1, 0), ref=2)
    assert c.mix == (0.1, 0.2, 0.7 + 5e-10) and c.guide == (0.0, 1.0, 0.0)
    assert all(type(x) is float for x in c.mix + c.guide)


def test_named_constructors():
    assert Combination.plain() == Combination((1.0,), (0.0,), None) and Combination.plain().k == 1
    la = Combination.linear_alignment(2.5)
    assert (la.mix, la.guide, la.ref, la.adaptive) == ((1.0, 0.0), (2.5, 0.0), 1, False)
    assert la.guided and not Combination.linear_alignment(0.0).guided
    c = Combination.compose((2.0, 1.0), (1.0, 3.0), (0.5,), adaptive=True)
    assert c.mix == (0.25, 0.75, 0.0, 0.0) and c.guide == (0.5, 0.75, -0.5, 0.0)
    assert c.ref == 3 and c.adaptive
    assert [c.role(k) for k in range(4)] == ["principled", "principled", "avoid", "plain"]
    assert Combination.compose((1.0, 1.0)).mix == (0.5, 0.5, 0.0)  # equal weights by default


def net_weights(combo: Combination) -> np.ndarray:
    """Each branch's net weight on the aligned logits at s_t = 1: z over one-hot rows (row k = e_k)."""
    rows = tuple(np.eye(combo.k, dtype=F32))
    return guided(base_row(rows, combo), rows, combo, np.arange(combo.k))


@pytest.mark.parametrize("r", [-1.0, 0.0, 0.3, 2.0, 7.25, 100.0])
def test_branch_weights(r):
    assert net_weights(Combination.linear_alignment(r)) == pytest.approx((1 + r, -r), rel=1e-6)
    c = Combination.compose((r, 2.0), (3.0, 1.0), (0.5,))
    assert net_weights(c).sum() == pytest.approx(1.0, abs=1e-5)  # guides cancel against the plain branch
    assert net_weights(Combination.plain()).tolist() == [1.0]


@pytest.mark.parametrize("r", [-1.0, 0.0, 1e-50, 0.5, 2.0, 10.0, 100.0])
@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_compose_of_one_principle_is_linear_alignment_bit_for_bit(r, weight):
    composed = Combination.compose((r,), (weight,))
    assert composed == Combination.linear_alignment(r)
    rs = np.random.default_rng(int(abs(r) * 7 + weight))
    zp = (rs.standard_t(5, 5000) * 3).astype(F32)
    z0 = (zp + rs.standard_normal(5000).astype(F32)).astype(F32)
    z0[rs.random(5000) < 0.05] = -np.inf
    ids = plausibility_mask(base_row((zp, z0), composed), 0.9, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):  # z = z_P + r (z_P - z_0), z_P itself at r = 0
        want = (zp if r == 0.0 else zp + F32(r) * (zp - z0))[ids]
    for combo in (composed, Combination.linear_alignment(r)):
        got = guided(base_row((zp, z0), combo), (zp, z0), combo, ids)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    p = GenerationParams(temperature=0.8, ratio=r, top_logprobs=5, repeat_penalty=1.2)
    r1, r2 = SplitMix64(3), SplitMix64(3)
    assert choose_rows((zp, z0), composed, p, r1, [1, 2]) == choose_rows((zp, z0), Combination.linear_alignment(r),
                                                                         p, r2, [1, 2])
    assert r1.state == r2.state
