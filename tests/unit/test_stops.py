"""The stop-string filter (runtime/stops.py): same outputs as a brute-force reference, cost bounded by
the new text (no model)."""

import random
import time

import pytest

from la_edge.runtime.stops import StopFilter


class Reference:
    """The filter as it was: rescans and rebuilds the whole text on every push (the specification)."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def push(self, new):
        start = max(0, len(self.text) - self.hold)
        self.text += new
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._take(len(self.text)), True
        safe = len(self.text)
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        return self._take(safe), False

    def flush(self):
        return self._take(len(self.text))

    def _take(self, upto):
        out = self.text[self.emitted: upto]
        self.emitted = max(self.emitted, upto)
        return out


def run(filter_, pieces):
    """What a request streams: each push's (text, hit) until a hit, then the flush if none."""
    out = []
    for p in pieces:
        text, hit = filter_.push(p)
        out.append((text, hit))
        if hit:
            return out
    out.append((filter_.flush(), False))
    return out


def random_split(rng, text):
    pieces, i = [], 0
    while i < len(text):
        n = rng.choice([0, 1, 1, 1, 2, 3, 5, 8])
        pieces.append(text[i:i + n])
        i += n
    return pieces


@pytest.mark.parametrize("alphabet", ["ab", "abc", "ab\né"])
def test_same_outputs_as_the_brute_force_reference_on_random_splits(alphabet):
    rng = random.Random(f"stops-{alphabet}")  # derandomized: the same cases on every run
    for _ in range(1500):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(0, 4))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        pieces = random_split(rng, text)
        want = run(Reference(stops), pieces)
        got = run(StopFilter(stops), pieces)
        assert got == want, (stops, pieces)


@pytest.mark.parametrize("stops, pieces, want", [
    (["abcd", "bc"], ["abc", "d"], [("a", True)]),  # "bc" ends first: the cut is at its start
    (["abcd", "bc"], ["abcd"], [("", True)]),  # both end in one push: the earliest start wins
    (["aab"], ["a", "a", "a", "b", "x"], [("", False), ("", False), ("a", False), ("", True)]),
    (["\n\nUser:"], ["Hi.\n", "\nUs", "er? no"], [("Hi.", False), ("", False), ("\n\nUser? no", False),
                                                   ("", False)]),
    ([], ["a", "b"], [("a", False), ("b", False), ("", False)]),
])
def test_table(stops, pieces, want):
    assert run(StopFilter(stops), pieces) == want == run(Reference(stops), pieces)


def test_holds_back_exactly_what_may_begin_a_stop_string():
    f = StopFilter(["<|end|>", "###"])
    assert f.push("text <|en") == ("text ", False) and f.held == "<|en"
    assert f.push("joy ##") == ("<|enjoy ", False) and f.held == "##"
    assert f.flush() == "##" and f.held == ""


def test_empty_stop_strings_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        StopFilter(["ok", ""])


def _push_seconds(f, pieces, repeats=5):
    """The fastest of `repeats` runs of pushing `pieces` (the minimum shrugs off a loaded machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in pieces:
            f.push(p)
        best = min(best, time.perf_counter() - t0)
    return best


def test_the_cost_of_a_token_does_not_grow_with_the_text():
    # 16 stop strings that never match; the same 500 tokens pushed after 1 thousand and after 4 million
    # characters. The old filter copied and rescanned the whole text on every push (about 100x slower
    # here at 4 million); a filter fed only the new characters takes the same time.
    stops = [f"<|stop {i}|>" for i in range(16)]
    pieces = ["lorem ", "ipsum ", "dolor ", "sit ", "amet, "] * 100
    short, long_ = StopFilter(stops), StopFilter(stops)
    short.push("x" * 1000)
    long_.push("x" * 4_000_000)
    t_short, t_long = _push_seconds(short, pieces), _push_seconds(long_, pieces)
    assert t_long < 3 * t_short + 0.01, (t_short, t_long)


def test_what_is_held_back_stays_shorter_than_the_longest_stop_string():
    # Long partial matches (runs of a, "abab..."), never a whole one: the filter keeps at most 511
    # characters whatever the length of the text, and the reference agrees on every push.
    rng = random.Random(7)
    stops = ["a" * 511 + "b", "ab" * 255 + "c", "b" * 300 + "c"]
    f, ref = StopFilter(stops), Reference(stops)
    for _ in range(1000):
        piece = rng.choice(["a" * rng.randint(1, 200), "ab" * rng.randint(1, 50), "b" * rng.randint(1, 90), "ba"])
        got = f.push(piece)
        assert got == ref.push(piece)
        if got[1]:  # a whole "a" * 511 + "b": the answer ends
            break
        assert len(f.held) <= 511
    else:
        assert f.flush() == ref.flush()
