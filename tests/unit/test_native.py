"""The native C sampler must choose exactly the ids the NumPy reference chooses."""

from __future__ import annotations

import ctypes
import math
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from la_edge.decoding import native
from la_edge.decoding.combination import Combination
from la_edge.errors import InvalidParameterError, NonFiniteLogitsError
from la_edge.decoding.params import GenerationParams
from la_edge.decoding.rng import SplitMix64
from la_edge.decoding.sampling import (choose_rows, choose_token, exp2_weights, jsd_bits, log_exact, mass_total,
                                       relative_weights)

if not native.available():
    pytest.skip(f"native sampler library not found: {native.load_error()}", allow_module_level=True)

F32 = np.float32
GREEDY = GenerationParams(temperature=0.0)


def both(zp, z0, params, seed=7, history=()):
    """(reference Choice, native Choice, reference rng, native rng) for one decision."""
    zp = np.ascontiguousarray(zp, dtype=F32)
    z0 = None if z0 is None else np.ascontiguousarray(z0, dtype=F32)
    r_ref, r_nat = SplitMix64(seed), SplitMix64(seed)
    ref = choose_token(zp, z0, params, r_ref, list(history))
    nat = native.NativeSampler(zp.size).choose_pair(zp, z0, params, r_nat, list(history))
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
def test_all_masked_row_picks_token_zero_without_rng(temperature):
    p = GenerationParams(temperature=temperature, top_logprobs=2)
    ref, nat, r1, r2 = both([-np.inf] * 5, [-np.inf] * 5, p, seed=3)
    assert ref.token == nat.token == 0
    assert ref.nucleus_size == nat.nucleus_size == 1
    assert r1.state == r2.state == 3
    assert ref.logprob == nat.logprob == -math.inf


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
    z0 = np.array([-np.inf, -np.inf, -np.inf], F32)  # z_P - z_0 = +inf -> every aligned value +inf
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
            s.choose_pair(zp, z0, GREEDY, None, ())
        with pytest.raises(NonFiniteLogitsError):
            choose_token(zp, z0, GREEDY)


def test_negative_history_is_invalid():
    p = GenerationParams(temperature=0.7, repeat_penalty=1.2)
    with pytest.raises(InvalidParameterError):
        native.NativeSampler(4).choose_pair(np.zeros(4, F32), None, p, SplitMix64(1), [1, -2])


def test_negative_history_is_invalid_when_greedy_too():
    with pytest.raises(InvalidParameterError):
        native.NativeSampler(4).choose_pair(np.zeros(4, F32), None, GREEDY.with_(repeat_penalty=1.2), None, [1, -2])


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
        native.NativeSampler(4).choose_pair(np.zeros(5, F32), None, GREEDY)


def test_pointers_are_accepted_zero_copy():
    rs = np.random.default_rng(0)
    zp = rs.standard_normal(1000).astype(F32)
    z0 = rs.standard_normal(1000).astype(F32)
    p = GenerationParams(temperature=0.9, top_logprobs=4)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    want = choose_token(zp, z0, p, SplitMix64(5))
    for chooser in (native.NativeSampler(1000), native.NumpySampler(1000)):
        got = chooser.choose_pair(ptr(zp), ptr(z0), p, SplitMix64(5), [])
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
    row = make_row(np.random.default_rng(seed), n, kind)
    w = relative_weights(row, temperature)
    assert np.array_equal(native.native_relative_weights(row, temperature).view(np.uint64), w.view(np.uint64))
    assert native.native_row_mass(row, temperature) == mass_total(w)


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
    for _ in range(steps):
        ref = choose_token(zp, z0, params, r_ref, history)
        nat = sampler.choose_pair(zp, z0, params, r_nat, history)
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
        ref = choose_token(zp, z0, p, r_ref, history)
        nat = sampler.choose_pair(zp, z0, p, r_nat, history)
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
    rs = np.random.default_rng(4)
    x = np.concatenate([rs.random(50000) * 2, np.exp(rs.uniform(-740, 700, 50000)), [
        5e-324, 1e-310, 2.0 ** -1022, np.nextafter(2.0 ** -1022, 0), 1.0, 2.0, 0.5, np.nextafter(1.0, 0),
        np.nextafter(1.0, 2), math.sqrt(2), np.nextafter(math.sqrt(2), 0), 1.7976931348623157e308]])
    assert np.array_equal(native.native_log(x).view(np.uint64), log_exact(x).view(np.uint64))


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
    assert bits(native.native_jsd_bits(b, ref, temperature)) == bits(want)
    assert 0.0 <= want <= 1.0


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
        ref = choose_rows(rows, combo, params, r_ref, history)
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
    assert s.choose_pair(zp, None, p, None, [2**32 + 1, 0]) == choose_token(zp, None, p, None, [0])
    assert s.choose_pair(zp, None, p, None, [2**32, 2**31]) == choose_token(zp, None, p, None, [])
    with pytest.raises(InvalidParameterError):
        s.choose_pair(zp, None, p, None, [-2**32 + 1])
