"""The ratio guard's pure rule: when an answer repeats, and what the step then uses."""

from la_edge import GenerationParams
from la_edge.decoding.combination import Combination
import numpy as np

from la_edge.decoding.strength import GUARD_PENALTY, guarded, penalised, repeating


def test_repeating_finds_a_recent_4gram_seen_before():
    assert not repeating([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert repeating([1, 2, 3, 4, 9, 1, 2, 3, 4])  # the last 4 tokens occurred at the start
    assert repeating([1, 2, 3, 4, 9, 1, 2, 3, 4] + [10, 11, 12])  # still held 3 tokens later
    assert not repeating([1, 2, 3, 4, 9, 1, 2, 3, 4] + list(range(20, 30)))  # released after 8 tokens
    assert not repeating([5] * 4)  # too short to hold a 4-gram seen before
    assert repeating([5] * 5)


def test_repeats_older_than_the_window_do_not_count():
    old = [1, 2, 3, 4] + list(range(100, 170))  # 74 tokens, the 4-gram 74 tokens back
    assert not repeating(old + [1, 2, 3, 4])
    assert repeating(list(range(100, 150)) + [1, 2, 3, 4] + [7] + [1, 2, 3, 4])


def test_the_guard_changes_nothing_when_off_unguided_or_fluent():
    la = Combination.linear_alignment(2.0)
    loop = [1, 2, 3, 4, 9, 1, 2, 3, 4]
    off = GenerationParams(ratio=2.0)
    on = off.with_(ratio_guard=True)
    assert guarded(la, off, loop) == (la, False)
    assert guarded(Combination.plain(), on, loop) == (Combination.plain(), False)
    assert guarded(la, on, [1, 2, 3, 4, 5, 6]) == (la, False)


def test_while_repeating_the_guidance_drops_and_the_base_rows_are_penalised():
    la = Combination.compose([2.0, 1.0], avoid_ratios=[1.5])
    combo, on = guarded(la, GenerationParams(ratio=2.0, ratio_guard=True), [1, 2, 3, 4, 9, 1, 2, 3, 4])
    assert on and not combo.guided and combo.mix == la.mix and combo.ref == la.ref
    row = np.array([2.0, -2.0, 2.0, 0.5], dtype=np.float32)
    out = penalised(row, [0, 1, 0], penalty=GUARD_PENALTY)
    assert out.tolist() == [np.float32(2.0) / np.float32(GUARD_PENALTY), -2.0 * np.float32(GUARD_PENALTY), 2.0, 0.5]
    assert row.tolist() == [2.0, -2.0, 2.0, 0.5]  # a copy: the backend's row is untouched
    assert penalised(row, list(range(2)) + [3] * 100, window=64).tolist()[:2] == [2.0, -2.0]  # outside the window


def test_ratio_guard_must_be_a_bool():
    import pytest

    from la_edge import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="ratio_guard"):
        GenerationParams(ratio_guard="yes")
