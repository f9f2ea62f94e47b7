"""The ratio guard's pure rule: when an answer repeats, and what the step then uses."""

from la_edge import GenerationParams
from la_edge.decoding.combination import Combination
from la_edge.decoding.strength import GUARD_PENALTY, guarded, repeating


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
    assert guarded(la, off, loop) == (la, off, False)
    assert guarded(Combination.plain(), on, loop) == (Combination.plain(), on, False)
    assert guarded(la, on, [1, 2, 3, 4, 5, 6]) == (la, on, False)


def test_while_repeating_the_step_is_principled_decoding_with_a_penalty_and_no_mask():
    la = Combination.compose([2.0, 1.0], avoid_ratios=[1.5])
    combo, params, on = guarded(la, GenerationParams(ratio=2.0, ratio_guard=True, repeat_penalty=1.1),
                                [1, 2, 3, 4, 9, 1, 2, 3, 4])
    assert on and not combo.guided and combo.mix == la.mix and combo.ref == la.ref
    assert params.repeat_penalty == GUARD_PENALTY and params.plausibility_top_p == 1.0
    _, strong, _ = guarded(la, GenerationParams(ratio_guard=True, repeat_penalty=2.0), [7] * 6)
    assert strong.repeat_penalty == 2.0  # a stronger penalty of the request's own stays


def test_ratio_guard_must_be_a_bool():
    import pytest

    from la_edge import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="ratio_guard"):
        GenerationParams(ratio_guard="yes")
