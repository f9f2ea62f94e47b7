"""The native C sampler must choose exactly the ids the NumPy reference chooses."""

from __future__ import annotations

import ctypes
import math
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from la_edge.decoding import native
from la_edge.decoding.combination import Combination
from la_edge.errors import AllTokensBannedError, InvalidParameterError, NonFiniteLogitsError
from la_edge.decoding.params import GenerationParams
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import choose_rows, exp2_weights, jsd_bits, mass_total

if not native.available():
    pytest.skip(f"native sampler library not found: {native.load_error()}", allow_module_level=True)

F32 = np.float32
GREEDY = GenerationParams(temperature=0.0)
PLAIN = Combination.plain()


def pair(zp, z0, params):
    """The rows and combination of Linear Alignment over (z_P, z_0) at params.ratio (z_P alone if z_0 is None)."""
    return ((zp,), PLAIN) if z0 is None else ((zp, z0), Combination.linear_alignment(params.ratio))


def both(zp, z0, params, seed=7, history=()):
    """(reference Choice, native Choice, reference rng, native rng) for one decision."""
    zp = np.ascontiguousarray(zp, dtype=F32)
    z0 = None if z0 is None else np.ascontiguousarray(z0, dtype=F32)
    rows, combo = pair(zp, z0, params)
    r_ref, r_nat = SplitMix64(seed), SplitMix64(seed)
    ref = choose_rows(rows, combo, params, r_ref, list(history))
    nat = native.NativeSampler(zp.size).choose(rows, combo, params, r_nat, list(history))
    return ref, nat, r_ref, r_nat


def assert_same(ref, nat, r_ref, r_nat):
    assert nat.token == ref.token
    assert nat.nucleus_size == ref.nucleus_size
    assert r_nat.state == r_ref.state
    assert [t for t, _ in nat.top] == [t for t, _ in ref.top]
    for a, b in [(ref.logprob, nat.logprob)] + [(x[1], y[1]) for x, y in zip(ref.top, nat.top)]:
        if math.isinf(a) or math.isinf(b):
            assert a == b
        else:
            assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ---- hand-written vectors ----

def test_greedy_argmax_plain():
    ref, nat, *_ = both([1.0, 3.0, 2.0], None, GREEDY.with_(plausibility_top_p=1.0))
    assert ref.token == nat.token == 1


def test_alignment_flips_the_choice_inside_the_nucleus():
    p = GREEDY.with_(ratio=2.0, plausibility_top_p=0.9)
    ref, nat, *_ = both([2.0, 1.9, -5.0], [2.5, 0.0, -5.0], p)
    assert ref.token == nat.token == 1
    assert ref.nucleus_size == nat.nucleus_size == 2


def test_nucleus_excludes_implausible_tokens():
    p = GREEDY.with_(ratio=2.0, plausibility_top_p=0.5)
    ref, nat, *_ = both([10.0, 0.0, 0.0], [10.0, -100.0, 0.0], p)
    assert ref.token == nat.token == 0
    assert ref.nucleus_size == nat.nucleus_size == 1


def test_ties_break_by_id_and_nucleus_mass_is_strict():
    for p_m, size in [(0.5, 2), (0.75, 3), (0.76, 4), (1.0, 4)]:
        ref, nat, *_ = both([1.0, 1.0, 1.0, 1.0], None, GREEDY.with_(plausibility_top_p=p_m))
        assert ref.token == nat.token == 0
        assert ref.nucleus_size == nat.nucleus_size == size


def test_banned_tokens_are_never_chosen():
    p = GenerationParams(temperature=1.0, plausibility_top_p=1.0)
    for seed in range(20):
        ref, nat, r1, r2 = both([-np.inf, 0.0, -np.inf], [0.0, 0.0, 0.0], p, seed)
        assert ref.token == nat.token == 1 and r1.state == r2.state


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_all_masked_row_is_a_typed_error_without_rng(temperature):
    p = GenerationParams(temperature=temperature, top_logprobs=2)
    rows = (F32([-np.inf] * 5), F32([-np.inf] * 5))
    for chooser in (choose_rows, native.NativeSampler(5).choose):
        rng = SplitMix64(3)
        with pytest.raises(AllTokensBannedError, match="base row is all -inf"):
            chooser(rows, Combination.linear_alignment(p.ratio), p, rng, [])
        assert rng.state == 3


def test_sampling_advances_rng_once_per_draw():
    p = GenerationParams(temperature=0.8, plausibility_top_p=0.9)
    ref, nat, r1, r2 = both([0.5, 0.2, 0.1, -1.0], [0.0, 0.4, 0.1, -1.0], p, seed=42)
    expected = SplitMix64(42)
    expected.next_u64()
    assert r1.state == r2.state == expected.state
    assert_same(ref, nat, r1, r2)


def test_fallback_to_principled_nucleus_when_aligned_weights_vanish():
    p = GenerationParams(temperature=0.7, ratio=2.0, plausibility_top_p=1.0)
    zp = np.array([1.0, 0.5, 0.0], F32)
    z0 = np.array([-3e38, -3e38, -3e38], F32)  # z_P - z_0 overflows to +inf -> every aligned value +inf
    ref, nat, r1, r2 = both(zp, z0, p, seed=9)
    assert_same(ref, nat, r1, r2)
    zp2 = np.array([-np.inf, 1.0, 0.0], F32)
    z02 = np.array([0.0, 3e38, 3e38], F32)  # aligned values overflow to -inf
    ref, nat, r1, r2 = both(zp2, z02, p.with_(ratio=3.0), seed=9)
    assert ref.token in (1, 2)
    assert_same(ref, nat, r1, r2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_rows_raise(bad):
    row = np.zeros(8, F32)
    row[5] = bad
    s = native.NativeSampler(8)
    for zp, z0 in [(row, np.zeros(8, F32)), (np.zeros(8, F32), row)]:
        with pytest.raises(NonFiniteLogitsError):
            s.choose(*pair(zp, z0, GREEDY), GREEDY, None, ())
        with pytest.raises(NonFiniteLogitsError):
            choose_rows(*pair(zp, z0, GREEDY), GREEDY)


def test_negative_history_is_invalid():
    p = GenerationParams(temperature=0.7, repeat_penalty=1.2)
    with pytest.raises(InvalidParameterError):
        native.NativeSampler(4).choose((np.zeros(4, F32),), PLAIN, p, SplitMix64(1), [1, -2])


def test_negative_history_is_invalid_when_greedy_too():
    with pytest.raises(InvalidParameterError):
        native.NativeSampler(4).choose((np.zeros(4, F32),), PLAIN, GREEDY.with_(repeat_penalty=1.2), None, [1, -2])


@pytest.mark.parametrize("history, penalties, token", [
    ((), dict(repeat_penalty=2.0), 0),
    ((0,), dict(repeat_penalty=2.0), 1),
    ((0,), dict(repeat_penalty=1.0), 0),
    ((0, 0), dict(frequency_penalty=0.15), 1),
    ((0,), dict(presence_penalty=0.3), 1),
    ((0, 2), dict(presence_penalty=0.3, repeat_last_n=1), 0),
])
def test_greedy_penalties_match_the_reference(history, penalties, token):
    p = GREEDY.with_(ratio=0.0, plausibility_top_p=1.0, top_logprobs=3, **penalties)
    ref, nat, r1, r2 = both([2.0, 1.9, 0.5], None, p, history=history)
    assert ref.token == nat.token == token
    assert_same(ref, nat, r1, r2)


def test_greedy_penalties_keep_the_unpenalised_nucleus():
    p = GREEDY.with_(ratio=2.0, plausibility_top_p=0.8, repeat_penalty=10.0, top_logprobs=2)
    zp = np.log(np.array([0.5, 0.3, 0.2], F32))
    ref, nat, r1, r2 = both(zp, zp - F32(0.1), p, history=[0])
    assert ref.token == nat.token == 1 and ref.nucleus_size == nat.nucleus_size == 2
    assert_same(ref, nat, r1, r2)


def test_wrong_shape_is_invalid():
    with pytest.raises(InvalidParameterError):
        native.NativeSampler(4).choose((np.zeros(5, F32),), PLAIN, GREEDY)


def test_pointers_are_accepted_zero_copy():
    rs = np.random.default_rng(0)
    zp = rs.standard_normal(1000).astype(F32)
    z0 = rs.standard_normal(1000).astype(F32)
    p = GenerationParams(temperature=0.9, top_logprobs=4)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    la = Combination.linear_alignment(p.ratio)
    want = choose_rows((zp, z0), la, p, SplitMix64(5))
    for chooser in (native.NativeSampler(1000), native.NumpySampler(1000)):
        got = chooser.choose((ptr(zp), ptr(z0)), la, p, SplitMix64(5), [])
        assert got.token == want.token and [t for t, _ in got.top] == [t for t, _ in want.top]


def test_make_chooser_paths(monkeypatch):
    assert native.make_chooser(10).path == "native"
    assert native.make_chooser(10, prefer_native=False).path == "numpy"
    monkeypatch.setattr(native, "_LIB", None)
    monkeypatch.setattr(native, "_LOAD_ERROR", "simulated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chooser = native.make_chooser(10)
    assert chooser.path == "numpy"
    assert len(caught) == 1 and "simulated" in str(caught[0].message)
    assert not native.available()


def test_loader_reports_its_library():
    assert native.load_error() is None and native.LIB_PATH


def test_the_library_exports_only_the_chooser_and_its_checks():
    # The building blocks were exported for tests only; parity is checked through la_choose itself.
    for name in ("la_relative_weights", "la_row_mass", "la_log", "la_jsd_bits"):
        assert not hasattr(native._LIB, name), name
    assert native._LIB.la_abi_version() == native.ABI_VERSION == 5
    for owner, name in [(native, "native_relative_weights"), (native, "native_row_mass"), (native, "native_log"),
                        (native, "native_jsd_bits"), (native.NativeSampler, "choose_pair"),
                        (native.NumpySampler, "choose_pair")]:
        assert not hasattr(owner, name), name


def test_exp2_weights_is_accurate():
    d = -np.linspace(0.0, 700.0, 200001)
    rel = np.abs(exp2_weights(d, 1.0) / np.exp(d) - 1.0)
    assert rel[:2000].max() < 2e-15 and rel.max() < 4e-13  # the larger part is rounding of d*log2e
    assert exp2_weights(np.array([0.0, -np.inf, -800.0]), 0.5).tolist() == [1.0, 0.0, 0.0]


def test_mass_total_is_a_faithful_sum():
    w = np.random.default_rng(1).random(100003)
    assert math.isclose(mass_total(w), math.fsum(w), rel_tol=1e-14)
    assert mass_total(np.zeros(3)) == 0.0


@settings(max_examples=60, deadline=None)
@given(n=st.sampled_from([1, 2, 15, 16, 17, 1000, 8191, 8192, 8193, 40000]), kind=st.sampled_from(
    ["normal", "ties", "masked", "huge", "tiny", "flat", "single", "peaked"]),
    temperature=st.sampled_from([0.01, 0.3, 1.0, 7.0, 100.0, 1e-300]), seed=st.integers(0, 2**32 - 1))
def test_weights_and_nucleus_total_are_bit_exact(n, kind, temperature, seed):
    # The nucleus cut compares prefix masses with top_p times the row's total: the same sizes at many
    # top_p show the same total; the logprobs (20 alternatives, bit for bit) show the same weights.
    row = make_row(np.random.default_rng(seed), n, kind)
    for top_p in (0.05, 0.5, 0.9, 0.999, 1.0):
        p = GenerationParams(temperature=temperature, plausibility_top_p=top_p, top_logprobs=20)
        assert_rows_parity((row,), PLAIN, p, seed)


# ---- properties: identical ids over random rows and parameters ----

ROW_KINDS = ("normal", "ties", "masked", "huge", "tiny", "flat", "single", "peaked")


def make_row(rs: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "normal":
        z = rs.standard_t(5, n) * 3.0
    elif kind == "ties":
        z = np.round(rs.standard_normal(n) * 2.0)
    elif kind == "masked":
        z = rs.standard_normal(n) * 3.0
        z[rs.random(n) < 0.7] = -np.inf
    elif kind == "huge":
        z = rs.choice([-3e38, -1e30, 0.0, 1e30, 3e38], n) * rs.random(n)
    elif kind == "tiny":
        z = rs.standard_normal(n) * 1e-30
    elif kind == "flat":
        z = np.zeros(n)
    elif kind == "single":
        z = np.full(n, -np.inf)
        z[rs.integers(n)] = rs.standard_normal()
    else:
        z = rs.standard_normal(n)
        z[rs.integers(n)] = 40.0
    return z.astype(F32)


params_st = st.builds(
    GenerationParams,
    ratio=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 10.0, 1e-50]),
    temperature=st.sampled_from([0.0, 0.3, 0.7, 1.0, 2.5]),
    plausibility_top_p=st.sampled_from([0.05, 0.5, 0.8, 0.95, 1.0 - 1e-12, 1.0]),
    plausibility_temperature=st.sampled_from([None, 0.5, 1.5]),
    plausibility_min_p=st.sampled_from([0.0, 0.0, 1e-3, 0.1, 1.0]),
    top_k=st.sampled_from([0, 1, 5, 50]),
    top_p=st.sampled_from([1.0, 0.9, 0.5]),
    min_p=st.sampled_from([0.0, 0.05, 0.5]),
    repeat_penalty=st.sampled_from([1.0, 1.3, 0.8]),
    frequency_penalty=st.sampled_from([0.0, 0.5, -0.7]),
    presence_penalty=st.sampled_from([0.0, 0.4]),
    repeat_last_n=st.sampled_from([0, 8, 64]),
    top_logprobs=st.sampled_from([0, 3, 20]),
)


greedy_penalties_st = st.builds(
    GenerationParams,
    ratio=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 10.0]),
    temperature=st.just(0.0),
    plausibility_top_p=st.sampled_from([0.05, 0.5, 0.8, 0.95, 1.0]),
    plausibility_temperature=st.sampled_from([None, 0.5, 1.5]),
    plausibility_min_p=st.sampled_from([0.0, 0.0, 1e-3, 0.1, 1.0]),
    repeat_penalty=st.sampled_from([1.0, 1.3, 0.8, 10.0]),
    frequency_penalty=st.sampled_from([0.0, 0.5, -0.7]),
    presence_penalty=st.sampled_from([0.0, 0.4, 2.0]),
    repeat_last_n=st.sampled_from([1, 8, 64]),
    top_logprobs=st.sampled_from([0, 3, 20]),
).filter(lambda p: p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)


def run_case(n, kind, z0_kind, params, seed, steps=3):
    rs = np.random.default_rng(seed % 2**32)
    zp = make_row(rs, n, kind)
    z0 = {"none": None, "perturbed": (zp + rs.standard_normal(n).astype(F32)).astype(F32),
          "other": make_row(rs, n, kind)}[z0_kind]
    history = [int(t) for t in rs.integers(0, n + 3, 40)]
    sampler = native.NativeSampler(n)
    r_ref, r_nat = SplitMix64(seed), SplitMix64(seed)
    rows, combo = pair(zp, z0, params)
    for _ in range(steps):
        try:
            ref = choose_rows(rows, combo, params, r_ref, history)
        except AllTokensBannedError as exc:  # z_0 "other" may ban the whole nucleus
            with pytest.raises(AllTokensBannedError, match=re.escape(str(exc))):
                sampler.choose(rows, combo, params, r_nat, history)
            return
        nat = sampler.choose(rows, combo, params, r_nat, history)
        assert_same(ref, nat, r_ref, r_nat)
        history.append(ref.token)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3000), kind=st.sampled_from(ROW_KINDS), z0_kind=st.sampled_from(["none", "perturbed", "other"]),
       params=params_st, seed=st.integers(0, 2**64 - 1))
def test_native_matches_reference_small(n, kind, z0_kind, params, seed):
    run_case(n, kind, z0_kind, params, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3000, 40000), kind=st.sampled_from(ROW_KINDS), z0_kind=st.sampled_from(["none", "perturbed"]),
       params=params_st, seed=st.integers(0, 2**64 - 1))
def test_native_matches_reference_medium(n, kind, z0_kind, params, seed):
    run_case(n, kind, z0_kind, params, seed, steps=1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([49152, 151936, 262144]), kind=st.sampled_from(["normal", "ties", "masked", "peaked"]),
       params=params_st, seed=st.integers(0, 2**64 - 1))
def test_native_matches_reference_large(n, kind, params, seed):
    run_case(n, kind, "perturbed", params, seed, steps=1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3000), kind=st.sampled_from(ROW_KINDS), z0_kind=st.sampled_from(["none", "perturbed", "other"]),
       params=greedy_penalties_st, seed=st.integers(0, 2**64 - 1))
def test_native_matches_reference_greedy_with_penalties(n, kind, z0_kind, params, seed):
    run_case(n, kind, z0_kind, params, seed, steps=6)


@pytest.mark.parametrize("temperature", [0.8, 0.0])
def test_native_matches_reference_long_seeded_run(temperature):
    rs = np.random.default_rng(11)
    n = 5000
    p = GenerationParams(temperature=temperature, top_k=40, top_p=0.95, min_p=0.02, repeat_penalty=1.1,
                         frequency_penalty=0.2, presence_penalty=0.1, top_logprobs=5)
    sampler = native.NativeSampler(n)
    r_ref, r_nat, history = SplitMix64(123), SplitMix64(123), []
    for _ in range(100):
        zp = make_row(rs, n, "normal")
        z0 = (zp + rs.standard_normal(n).astype(F32)).astype(F32)
        ref = choose_rows(*pair(zp, z0, p), p, r_ref, history)
        nat = sampler.choose(*pair(zp, z0, p), p, r_nat, history)
        assert_same(ref, nat, r_ref, r_nat)
        history.append(ref.token)


# ---- ABI 3: K rows, a Combination, the adaptive ratio ----

def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def assert_identical(ref, nat, r_ref, r_nat):
    """Same ids, RNG state, logprobs and ratio_scale, bit for bit."""
    assert (nat.token, nat.nucleus_size) == (ref.token, ref.nucleus_size)
    assert r_nat.state == r_ref.state
    assert [t for t, _ in nat.top] == [t for t, _ in ref.top]
    assert [bits(v) for _, v in nat.top] == [bits(v) for _, v in ref.top]
    assert bits(nat.logprob) == bits(ref.logprob)
    assert bits(nat.ratio_scale) == bits(ref.ratio_scale)


def test_log_is_bit_exact():
    # A logprob is log(w) - log(total) of weights w in (0, 1], subnormal ones too: rows of one 0 and 20
    # lower values give 20 logs each (total ~1); flat rows of n tokens give log(n) (total = n).
    rs = np.random.default_rng(4)
    p = GREEDY.with_(plausibility_top_p=1.0, top_logprobs=20)
    sampler, lowest = native.NativeSampler(21), 0.0
    for low in [1.0, 30.0, 700.0, 744.0] * 150:
        row = np.concatenate([[0.0], -rs.uniform(0.0, low, 20)]).astype(F32)
        ref, nat = choose_rows((row,), PLAIN, p), sampler.choose((row,), PLAIN, p)
        assert [bits(v) for _, v in nat.top] == [bits(v) for _, v in ref.top] and len(ref.top) == 20
        lowest = min(lowest, ref.top[-1][1])
    assert lowest < -709  # subnormal weights (below e^-708.4) reached
    for n in (1, 2, 3, 7, 1000, 4097, 65537):
        flat = np.zeros(n, F32)
        ref, nat = choose_rows((flat,), PLAIN, p), native.NativeSampler(n).choose((flat,), PLAIN, p)
        assert bits(nat.logprob) == bits(ref.logprob) and math.isclose(-ref.logprob, math.log(n), rel_tol=1e-15)


@settings(max_examples=60, deadline=None)
@given(n=st.sampled_from([1, 2, 17, 1000, 8193, 40000]), kind=st.sampled_from(ROW_KINDS),
       ref_kind=st.sampled_from(["perturbed", "same", "other"]),
       temperature=st.sampled_from([0.05, 0.7, 1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_jsd_is_bit_exact(n, kind, ref_kind, temperature, seed):
    rs = np.random.default_rng(seed)
    b = make_row(rs, n, kind)
    ref = {"perturbed": (b + rs.standard_normal(n).astype(F32) * F32(0.3)).astype(F32), "same": b,
           "other": make_row(rs, n, kind)}[ref_kind]
    want = jsd_bits(b, ref, temperature)
    assert 0.0 <= want <= 1.0
    adaptive = Combination((1.0, 0.0), (0.0, 0.0), 1, adaptive=True)  # s_t is computed, nothing guided
    got = assert_rows_parity((b, ref), adaptive, GREEDY.with_(plausibility_temperature=temperature), seed)
    if isinstance(got, tuple):  # b all -inf: nothing to sample, in both paths
        assert not np.isfinite(b).any()
    else:
        assert bits(got.ratio_scale) == bits(want)


SHAPES = ("two_principles", "principles_and_avoid", "base_with_plain")


def make_combination(rs: np.random.Generator, shape: str, adaptive: bool) -> Combination:
    ratios = tuple(float(r) for r in rs.uniform(-1.0, 6.0, 2))
    weights = tuple(float(w) for w in rs.random(2) + 0.05)
    if shape == "two_principles":  # K = 3
        return Combination.compose(ratios, weights, adaptive=adaptive)
    if shape == "principles_and_avoid":  # K = 4
        return Combination.compose(ratios, weights, (float(rs.uniform(0.0, 3.0)),), adaptive)
    w = float(rs.uniform(0.2, 0.8))  # K = 3, the plain branch inside the base row too
    return Combination((w, 0.0, 1.0 - w), (ratios[0], ratios[1], 0.0), 2, adaptive)


def run_rows_case(n, kind, shape, adaptive, params, seed, steps):
    rs = np.random.default_rng(seed % 2**32)
    combo = make_combination(rs, shape, adaptive)
    zp = make_row(rs, n, kind)
    rows = [zp] + [(zp + rs.standard_normal(n).astype(F32) * F32(rs.uniform(0.1, 2.0))).astype(F32)
                   for _ in range(combo.k - 1)]
    history = [int(t) for t in rs.integers(0, n + 3, 40)]
    sampler = native.NativeSampler(n)
    r_ref, r_nat = SplitMix64(seed), SplitMix64(seed)
    for _ in range(steps):
        try:
            ref = choose_rows(rows, combo, params, r_ref, history)
        except AllTokensBannedError as exc:  # kind "masked" or "single" may leave nothing to sample
            with pytest.raises(AllTokensBannedError, match=re.escape(str(exc))):
                sampler.choose(tuple(rows), combo, params, r_nat, history)
            return
        nat = sampler.choose(tuple(rows), combo, params, r_nat, history)
        assert_identical(ref, nat, r_ref, r_nat)
        assert (ref.ratio_scale == 1.0) or adaptive
        history.append(ref.token)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3000), kind=st.sampled_from(ROW_KINDS), shape=st.sampled_from(SHAPES),
       adaptive=st.booleans(), params=params_st, seed=st.integers(0, 2**64 - 1))
def test_rows_native_matches_reference_small(n, kind, shape, adaptive, params, seed):
    run_rows_case(n, kind, shape, adaptive, params, seed, steps=3)


@pytest.mark.parametrize("n", [49152, 262144])
@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_rows_native_matches_reference_large(n, shape, adaptive, temperature):
    p = GenerationParams(temperature=temperature, top_k=50, top_p=0.95, min_p=0.01, repeat_penalty=1.2,
                         frequency_penalty=0.3, presence_penalty=0.2, top_logprobs=20)
    run_rows_case(n, "normal", shape, adaptive, p, seed=n + 7 * SHAPES.index(shape) + int(adaptive), steps=2)


def test_rows_errors_are_typed():
    s = native.NativeSampler(4)
    good, bad = np.zeros(4, F32), np.array([0, 0, np.nan, 0], F32)
    combo = Combination.compose((1.0, 2.0))
    with pytest.raises(NonFiniteLogitsError, match=r"branch 1 \(principled\)"):
        s.choose((good, bad, good), combo, GREEDY)
    with pytest.raises(NonFiniteLogitsError, match=r"branch 2 \(plain\)"):
        s.choose((good, good, bad), combo, GREEDY)
    mix = (0.1259088322702662, 0.3272475471886114, 0.32187400796042553, 0.22496961258069686)
    big = np.full(4, np.finfo(np.float32).max, F32)
    with pytest.raises(NonFiniteLogitsError, match="mixed base row"):
        s.choose((big,) * 4, Combination(mix, (0.0,) * 4), GREEDY)
    with pytest.raises(InvalidParameterError, match="2 logits rows"):
        s.choose((good, good), combo, GREEDY)
    with pytest.raises(InvalidParameterError, match="NULL"):
        s.choose((good, ctypes.POINTER(ctypes.c_float)(), good), combo, GREEDY)


def test_choosers_take_pointer_rows():
    rs = np.random.default_rng(8)
    rows = [rs.standard_normal(2000).astype(F32) for _ in range(4)]
    ptrs = tuple(r.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for r in rows)
    combo = Combination.compose((2.0, 1.0), (1.0, 2.0), (0.5,), adaptive=True)
    p = GenerationParams(temperature=0.9, top_logprobs=4)
    want = choose_rows(rows, combo, p, SplitMix64(5))
    for chooser in (native.make_chooser(2000), native.make_chooser(2000, prefer_native=False)):
        got = chooser.choose(ptrs, combo, p, SplitMix64(5), [])
        assert (got.token, got.top, bits(got.ratio_scale)) == (want.token, want.top, bits(want.ratio_scale))


def test_history_ids_past_int32_are_ignored_not_wrapped():
    p = GREEDY.with_(repeat_penalty=5.0, plausibility_top_p=1.0, top_logprobs=2)
    zp = np.array([2.0, 1.9, 0.5], F32)
    s = native.NativeSampler(3)
    assert s.choose((zp,), PLAIN, p, None, [2**32 + 1, 0]) == choose_rows((zp,), PLAIN, p, None, [0])
    assert s.choose((zp,), PLAIN, p, None, [2**32, 2**31]) == choose_rows((zp,), PLAIN, p, None, [])
    with pytest.raises(InvalidParameterError):
        s.choose((zp,), PLAIN, p, None, [-2**32 + 1])


# ---- -inf outside the base row bans the token, in both paths ----

def rows_outcome(chooser, rows, combo, params, seed, history):
    """(Choice or (error type, message), rng state after) of one decision."""
    rng = SplitMix64(seed)
    try:
        return chooser(rows, combo, params, rng, list(history)), rng.state
    except AllTokensBannedError as exc:
        return (type(exc), str(exc)), rng.state


def assert_rows_parity(rows, combo, params, seed=7, history=()):
    """Native and NumPy agree bit for bit, or raise the same typed error; returns the reference outcome."""
    rows = tuple(np.ascontiguousarray(r, dtype=F32) for r in rows)
    ref, s_ref = rows_outcome(choose_rows, rows, combo, params, seed, history)
    nat, s_nat = rows_outcome(native.NativeSampler(rows[0].size).choose, rows, combo, params, seed, history)
    if isinstance(ref, tuple) or isinstance(nat, tuple):
        assert nat == ref and s_nat == s_ref
    else:
        assert_identical(ref, nat, SplitMix64(s_ref), SplitMix64(s_nat))
    return ref


NEG = -np.inf
BAN_CASES = {  # rows, combination, the banned token
    "plain": ((F32([1.0, 0.9, 0.5, 0.2]), F32([0.0, NEG, 0.0, 0.0])), Combination.linear_alignment(2.0), 1),
    "avoid": ((F32([1.0, 0.9, 0.5, 0.2]), F32([0.0, 0.0, NEG, 0.0]), F32([0.0, 0.0, 0.0, 0.0])),
              Combination.compose((1.0,), avoid_ratios=(1.5,)), 2),
    "negative_guide": ((F32([1.0, 0.5, 0.2, 0.1]), F32([NEG, 0.0, 0.0, 0.0]), F32([0.0, 0.0, 0.0, 0.0])),
                       Combination((0.5, 0.0, 0.5), (1.0, -0.5, 0.0), 2), 0),
    "adaptive_plain": ((F32([1.0, 0.9, 0.5, 0.2]), F32([0.0, 0.5, NEG, 0.0])),
                       Combination((1.0, 0.0), (3.0, 0.0), 1, adaptive=True), 2),
}


@pytest.mark.parametrize("case", sorted(BAN_CASES))
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_minus_inf_outside_the_base_row_bans_the_token_in_both_paths(case, temperature):
    rows, combo, banned = BAN_CASES[case]
    p = GenerationParams(temperature=temperature, plausibility_top_p=1.0, top_logprobs=4)
    for seed in range(25):
        ref = assert_rows_parity(rows, combo, p, seed)
        assert ref.token != banned and banned not in [t for t, _ in ref.top] and math.isfinite(ref.logprob)


ALL_BANNED = {
    "base_all_minus_inf": ((F32([NEG] * 5),), Combination.plain()),
    "la_base_all_minus_inf": ((F32([NEG] * 5), F32([0.0] * 5)), Combination.linear_alignment(2.0)),
    "mixed_base_all_minus_inf": ((F32([NEG, 0.0]), F32([0.0, NEG]), F32([0.0, 0.0])), Combination.compose((1.0, 1.0))),
    "nucleus_banned_by_plain": ((F32([3.0, 0.0, 0.0]), F32([NEG, 0.0, 0.0])), Combination.linear_alignment(2.0)),
    "plain_all_minus_inf": ((F32([1.0, 0.5, 0.0]), F32([NEG] * 3)), Combination.linear_alignment(2.0)),
}


@pytest.mark.parametrize("case", sorted(ALL_BANNED))
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_token_banned_is_the_same_typed_error_in_both_paths(case, temperature):
    rows, combo = ALL_BANNED[case]
    p = GenerationParams(temperature=temperature, plausibility_top_p=0.5, top_logprobs=2)
    ref = assert_rows_parity(rows, combo, p, seed=3)
    assert isinstance(ref, tuple) and ref[0] is AllTokensBannedError


def sprinkle(rs: np.random.Generator, row: np.ndarray, density: float) -> np.ndarray:
    row = row.copy()
    row[rs.random(row.size) < density] = -np.inf
    return row


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2000), kind=st.sampled_from(ROW_KINDS), shape=st.sampled_from(SHAPES + ("la",)),
       adaptive=st.booleans(), density=st.sampled_from([0.0, 0.01, 0.3, 0.9, 1.0]), params=params_st,
       seed=st.integers(0, 2**64 - 1))
def test_banning_rows_native_matches_reference(n, kind, shape, adaptive, density, params, seed):
    rs = np.random.default_rng(seed % 2**32)
    combo = (Combination((1.0, 0.0), (params.ratio, 0.0), 1, adaptive) if shape == "la"
             else make_combination(rs, shape, adaptive))
    zp = make_row(rs, n, kind)
    rows = [zp] + [sprinkle(rs, (zp + rs.standard_normal(n).astype(F32)).astype(F32), density)
                   for _ in range(combo.k - 1)]
    history = [int(t) for t in rs.integers(0, n + 3, 20)]
    ref = assert_rows_parity(rows, combo, params, seed, history)
    if not isinstance(ref, tuple) and combo.guided and not adaptive:
        assert all(rows[k][ref.token] != -np.inf for k in range(combo.k))  # every row here guides or is plain


# ---- the sort's stack depth is O(log n) ----

def sort_killer(n: int) -> np.ndarray:
    """Logits that drive a median-of-three quicksort which always recurses on its left part (the
    sampler's order: value descending, ties by id) to depth ~n/2: McIlroy's adversary, with undecided
    items ordered before decided ones and each decision handing out the latest rank left."""
    c, rank, latest = np.arange(n), np.full(n, -1), [n - 1]

    def fix(x):
        rank[x], latest[0] = latest[0], latest[0] - 1

    def before(a, b):
        if rank[a] < 0 and rank[b] < 0:
            fix(a)
        return rank[a] < 0 if rank[a] < 0 or rank[b] < 0 else rank[a] < rank[b]

    lo, m, stack = 0, n, []  # the sampler's partial_sort(c, n, n), its recursion unrolled
    while True:
        while m > 16:
            mid = m // 2
            for a, b in ((mid, 0), (m - 1, 0), (m - 1, mid)):
                if before(c[lo + a], c[lo + b]):
                    c[[lo + a, lo + b]] = c[[lo + b, lo + a]]
            c[[lo, lo + mid]] = c[[lo + mid, lo]]
            if rank[c[lo]] < 0:
                fix(c[lo])
            rp, i, j = rank[c[lo]], -1, m
            while True:  # Hoare's scans, each a vector search (the pivot is decided)
                i += 1 + int(np.argmax(rank[c[lo + i + 1:lo + m]] >= rp))
                j -= 1 + int(np.argmax(rank[c[lo:lo + j]][::-1] <= rp))
                if i >= j:
                    break
                c[[lo + i, lo + j]] = c[[lo + j, lo + i]]
            stack.append((lo + j + 1, m - j - 1))
            m = j + 1
        for i in range(1, m):  # insertion sort of the leaf
            x, j = c[lo + i], i
            while j > 0 and before(x, c[lo + j - 1]):
                c[lo + j] = c[lo + j - 1]
                j -= 1
            c[lo + j] = x
        if not stack:
            break
        lo, m = stack.pop()
    undecided = np.flatnonzero(rank < 0)
    rank[undecided] = np.arange(undecided.size)
    return (-rank / 1024).astype(F32)  # every weight nonzero: the whole row is sorted


_SMALL_STACK = """
import sys, threading, numpy as np
from la_edge.decoding import native
from la_edge.decoding.combination import Combination
from la_edge.decoding.params import GenerationParams
from la_edge.decoding.rng import SplitMix64
row = np.load(sys.argv[1])
sampler, out = native.NativeSampler(row.size), []
params = GenerationParams(temperature=1.0, plausibility_top_p=1.0, top_logprobs=3)
threading.stack_size(128 * 1024)
t = threading.Thread(target=lambda: out.append(sampler.choose((row,), Combination.plain(), params, SplitMix64(5))))
t.start()
t.join()
print(out[0].token, out[0].top)
"""


def test_sort_stack_depth_is_logarithmic_on_adversarial_rows(tmp_path):
    # Recursing on the left part always, this row needs ~10000 nested calls (~0.5 MB of stack); on the
    # smaller part, ~log2(n). A 128 KiB thread stack shows the difference (a crash is a failure).
    row = sort_killer(20000)
    np.save(tmp_path / "row.npy", row)
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _SMALL_STACK, str(tmp_path / "row.npy")], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the sampler crashed on a 128 KiB stack (rc {run.returncode}): {run.stderr[-400:]}"
    want = choose_rows((row,), Combination.plain(), GenerationParams(temperature=1.0, plausibility_top_p=1.0,
                                                                     top_logprobs=3), SplitMix64(5))
    assert run.stdout.strip() == f"{want.token} {want.top}"


def test_plausibility_min_p_drops_tokens_below_a_share_of_the_top():
    # Weights relative to the top (T_m = 1): 1, e^-1 = 0.37, e^-3 = 0.05, e^-6 = 0.0025.
    p = GREEDY.with_(ratio=4.0, plausibility_top_p=1.0)
    zp, z0 = [6.0, 5.0, 3.0, 0.0], [6.0, 5.0, 3.0, -9.0]
    for min_p, size, token in [(0.0, 4, 3), (0.01, 3, 0), (0.1, 2, 0), (1.0, 1, 0)]:
        ref, nat, *_ = both(zp, z0, p.with_(plausibility_min_p=min_p))
        assert (ref.token, ref.nucleus_size) == (nat.token, nat.nucleus_size) == (token, size)
    with pytest.raises(InvalidParameterError, match="plausibility_min_p"):
        GREEDY.with_(plausibility_min_p=1.5)
