"""Stop strings found across token boundaries, in time linear in the new text.

One Knuth-Morris-Pratt matcher per stop string reads each new character once. Its state is the
length of the longest prefix of its stop string that ends the text so far, so the filter holds back
exactly the text that may still begin a stop string (the longest such prefix over all of them) and
never rescans what it already emitted: a push costs O(len(new) x stop strings), amortized, whatever
the length of the answer.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

__all__ = ["StopFilter"]


def _borders(s: str) -> List[int]:
    """KMP failure table: borders[k] is the length of the longest proper prefix of s[:k + 1] that is
    also its suffix."""
    borders = [0] * len(s)
    q = 0
    for k in range(1, len(s)):
        while q and s[k] != s[q]:
            q = borders[q - 1]
        if s[k] == s[q]:
            q += 1
        borders[k] = q
    return borders


class _Matcher:
    """One stop string's automaton; `state` is how much of it the text fed so far ends with."""

    __slots__ = ("stop", "borders", "state")

    def __init__(self, stop: str):
        self.stop = stop
        self.borders = _borders(stop)
        self.state = 0

    def feed(self, text: str) -> int:
        """Read `text`; the index in it just past the first whole match (then it stops), else -1."""
        s, borders, q = self.stop, self.borders, self.state
        n, first, i, m = len(s), s[0], 0, len(text)
        while i < m:
            if q == 0:  # nothing pending: jump to the next possible start (str.find runs in C)
                i = text.find(first, i)
                if i < 0:
                    break
                q, i = 1, i + 1
            else:
                ch = text[i]
                while q and s[q] != ch:
                    q = borders[q - 1]
                if s[q] == ch:
                    q += 1
                i += 1
            if q == n:
                self.state = q
                return i
        self.state = q
        return -1


class StopFilter:
    """Finds stop strings across token boundaries; holds back text that may begin one.

    push() returns the text safe to emit and whether a stop string ended in the new text; on a hit
    the text is cut where the earliest-starting of the stop strings found in it begins, and the
    filter is done (later pushes return nothing). flush() returns what is held back.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        if not all(self.stops):
            raise ValueError("stop strings must be non-empty")
        self._matchers = [_Matcher(s) for s in self.stops]
        self._pending = ""  # held back: the longest suffix that is a proper prefix of a stop string
        self._hit = False

    @property
    def held(self) -> str:
        """The text held back (it may still begin a stop string)."""
        return self._pending

    def push(self, new: str) -> Tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop string was hit)."""
        if self._hit:
            return "", True
        offset = len(self._pending)  # where `new` begins in pending
        pending = self._pending + new
        cut = -1
        for m in self._matchers:
            end = m.feed(new)
            if end >= 0:
                start = offset + end - len(m.stop)  # >= 0: the part before `new` was held back
                cut = start if cut < 0 else min(cut, start)
        if cut >= 0:
            self._pending, self._hit = "", True
            return pending[:cut], True
        hold = max((m.state for m in self._matchers), default=0)
        safe = len(pending) - hold
        self._pending = pending[safe:]
        return pending[:safe], False

    def flush(self) -> str:
        """The text held back, released at the end of the answer."""
        out, self._pending = self._pending, ""
        return out
