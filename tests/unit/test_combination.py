"""Combination: validation tables, the named constructors, and K = 2 bit-identity with Linear Alignment."""

import numpy as np
import pytest

from la_edge.decoding.combination import MAX_BRANCHES, Combination
from la_edge.decoding.params import GenerationParams
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import base_row, choose_rows, choose_token, combine, guided, plausibility_mask
from la_edge.errors import InvalidParameterError

F32 = np.float32


@pytest.mark.parametrize("kwargs, message", [
    (dict(mix=(), guide=()), "1 to 16 branches"),
    (dict(mix=(1.0,) + (0.0,) * MAX_BRANCHES, guide=(0.0,) * (MAX_BRANCHES + 1)), "1 to 16 branches"),
    (dict(mix=(1.0, 0.0), guide=(0.0,)), "one per branch"),
    (dict(mix=(1.5, -0.5), guide=(0.0, 0.0)), r"mix\[1\] must be 0 or in"),
    (dict(mix=(1.0, 1e-40), guide=(0.0, 0.0)), r"mix\[1\] must be 0 or in"),
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


@pytest.mark.parametrize("r", [-1.0, 0.0, 0.3, 2.0, 7.25, 100.0])
def test_branch_weights(r):
    assert Combination.linear_alignment(r).branch_weights == (1 + r, -r)
    c = Combination.compose((r, 2.0), (3.0, 1.0), (0.5,))
    assert sum(c.branch_weights) == pytest.approx(1.0)  # guides cancel against the plain branch
    assert Combination.plain().branch_weights == (1.0,)


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
    want = combine(zp, z0, r)[ids]
    for combo in (composed, Combination.linear_alignment(r)):
        got = guided(base_row((zp, z0), combo), (zp, z0), combo, ids)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    p = GenerationParams(temperature=0.8, ratio=r, top_logprobs=5, repeat_penalty=1.2)
    r1, r2 = SplitMix64(3), SplitMix64(3)
    assert choose_rows((zp, z0), composed, p, r1, [1, 2]) == choose_token(zp, z0, p, r2, [1, 2])
    assert r1.state == r2.state
