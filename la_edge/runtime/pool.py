"""One owner for a context's KV sequences: free ids, parked sequences (the prompt cache, least
recently used first), reserved cells (unified caches) and the KV changes still to be made.

No model, no threads. `place()` gives a job's branches their sequences and returns a typed
`Placement`; every KV change it decides (evict, trim), and every clear of a finished job, is queued
here and made by the engine thread before its next decode (`next_change()`, then `change_done()`
once made), whatever happens to the job meanwhile.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple


class KvOp(enum.Enum):
    """A KV-cache change the runner makes before its next decode."""

    CLEAR = "clear"  # remove all the sequence's cells
    TRIM = "trim"  # remove its cells from `pos` on (an adopted parked sequence)


@dataclass(frozen=True)
class KvChange:
    """One queued change; a TRIM names the job and branch to prefill cold if the cache cannot cut."""

    op: KvOp
    seq_id: int
    pos: int = -1
    job: object = None
    branch: int = -1


@dataclass(frozen=True)
class Parked:
    """A finished job's sequence kept in the KV cache: its prompt tokens (reusable) and its cells."""

    tokens: List[int]
    cells: int


@dataclass(frozen=True)
class Placement:
    """Where a job's K branches go: a sequence id and the prompt tokens it reuses, per branch.

    copy: branch 0 decodes the shared prefix alone and it is copied to the other branches.
    """

    seq_ids: Tuple[int, ...]
    reused: Tuple[int, ...]
    copy: bool
    cells: int


def matched(cached: Sequence[int], tokens: Sequence[int], align: int = 1) -> int:
    """Tokens of `tokens` a cached sequence already holds, in whole blocks of `align`, leaving at
    least two to decode."""
    n = min(len(cached), len(tokens) - 2)
    i = 0
    while i < n and cached[i] == tokens[i]:
        i += 1
    return max(i - i % align, 0)


def cells_needed(prompts: Sequence[Sequence[int]], max_tokens: int, shared: int) -> int:
    """KV cells a job's branches may fill: each prompt and max_tokens, the shared prefix once."""
    return sum(len(p) + max_tokens for p in prompts) - (len(prompts) - 1) * shared


class SequencePool:
    """Sequence ids, parked sequences, reserved cells and pending KV changes of one context."""

    def __init__(self, n_seq: int, n_cells: int = 0, kv_unified: bool = False,
                 prompt_cache: bool = False, reuse_block: int = 1):
        self.n_seq = n_seq
        self.n_cells = n_cells
        self.kv_unified = kv_unified
        self.prompt_cache = prompt_cache
        self.reuse_block = reuse_block  # reuse whole blocks of this many tokens (see matched())
        self.free: List[int] = list(range(n_seq - 1, -1, -1))  # pop() hands out 0, 1, ...
        self.parked: "OrderedDict[int, Parked]" = OrderedDict()
        self.reserved = 0  # cells held by placed jobs
        self._changes: List[KvChange] = []

    # ---- placement -------------------------------------------------------------------------
    def place(self, prompts: Sequence[Sequence[int]], shared: int, max_tokens: int,
              job: object = None) -> Optional[Placement]:
        """Give each branch a sequence (adopting parked ones where the cache allows), or None to wait.

        The evictions and trims it decides are queued (take_changes()); nothing changes on None.
        """
        plan = self._choose(prompts, shared, max_tokens, self.prompt_cache)
        if (plan is not None and self.kv_unified and not plan[2] and shared
                and plan[3] > self.n_cells):
            # Adopting would drop the prefix copy and over-commit the cache: start clean instead.
            plan = self._choose(prompts, shared, max_tokens, False)
        if plan is None:
            return None
        return self._commit(prompts, shared, job, *plan)

    def _choose(self, prompts, shared: int, max_tokens: int, reuse_ok: bool):
        taken = {}  # parked id -> tokens it gives
        reuse: List[Optional[int]] = []
        free_left = len(self.free)
        for tokens in prompts:
            sid, n = self._best(tokens, taken) if reuse_ok else (None, 0)
            # While free ids last, a parked sequence is adopted only if little of it is cut away
            # (a conversation's next turn, the same prompt again), not for a shared system prompt.
            adopt = False
            if sid is not None:
                kept = self.parked[sid].tokens
                whole = matched(kept, tokens)  # before rounding down to whole blocks
                adopt = len(kept) - whole <= max(2, whole // 8) or free_left == 0
            if adopt:
                taken[sid] = n
                reuse.append(sid)
            else:
                reuse.append(None)
                free_left -= 1
        copy = shared > 0 and all(r is None or taken[r] < shared for r in reuse)
        if copy:
            for k in range(1, len(reuse)):  # the other branches will be copies: start them clean
                if reuse[k] is not None:
                    del taken[reuse[k]]
                    reuse[k] = None
        cells = cells_needed(prompts, max_tokens, shared if copy else 0)
        evictable = [sid for sid in self.parked if sid not in taken]
        n_evict = max(0, sum(r is None for r in reuse) - len(self.free))
        if n_evict > len(evictable):
            return None
        evict = evictable[:n_evict]
        if self.kv_unified:
            rest = evictable[n_evict:]
            held = sum(self.parked[sid].cells for sid in rest)
            while rest and self.reserved + cells + held > self.n_cells:
                sid = rest.pop(0)
                evict.append(sid)
                held -= self.parked[sid].cells
            if self.reserved and self.reserved + cells + held > self.n_cells:
                return None  # wait for cells (a job alone always fits: the engine checks at submit)
        return reuse, taken, copy, cells, evict

    def _best(self, tokens: Sequence[int], taken) -> Tuple[Optional[int], int]:
        """The parked sequence holding the most of `tokens` in whole blocks; on a tie the longer
        match before rounding (the same conversation, not one sharing its system prompt), then
        the most recently used."""
        best, best_key = None, (0, 0)
        for sid, p in reversed(self.parked.items()):
            if sid in taken:
                continue
            whole = matched(p.tokens, tokens)
            key = (whole - whole % self.reuse_block, whole)
            if key[0] > 0 and key > best_key:
                best, best_key = sid, key
        return best, best_key[0]

    def _commit(self, prompts, shared, job, reuse, taken, copy, cells, evict) -> Placement:
        for sid in evict:
            del self.parked[sid]
            self.free.append(sid)
            self._changes.append(KvChange(KvOp.CLEAR, sid))
        self.reserved += cells
        ids: List[int] = []
        reused: List[int] = []
        anchor = next((r for r in reuse if r is not None), None)
        if anchor is None:  # a fresh job: the lowest run of free ids long enough for all its branches
            anchor = self._run_start(len(reuse))
        for k, sid in enumerate(reuse):
            n = 0
            if sid is None:  # next to the job's other ids (see _free_id)
                sid = self._free_id(ids[-1] if ids else anchor, first=not ids)
            else:
                n = taken[sid]
                self.parked.pop(sid)
                self._changes.append(KvChange(KvOp.TRIM, sid, n, job, k))  # also drops what it generated
            ids.append(sid)
            reused.append(n)
        return Placement(tuple(ids), tuple(reused), copy, cells)

    def _run_start(self, n: int) -> Optional[int]:
        """The lowest free id starting n consecutive free ids (None: no such run)."""
        free = set(self.free)
        return next((s for s in sorted(free) if all(s + i in free for i in range(n))), None)

    def _free_id(self, near: Optional[int], first: bool = False) -> int:
        """A free id: `near` itself for a job's `first` id, else the closest to `near` (another
        branch's id), the one after it on a tie. With split streams llama.cpp decodes only
        consecutive ascending sequence ids in one forward pass, and attends over every stream between
        a batch's lowest and highest id (README, "Performance", "Long context")."""
        if near is None:
            sid = min(self.free)
        elif first and near in self.free:
            sid = near
        else:
            sid = min(self.free, key=lambda s: (abs(s - near), s < near))
        self.free.remove(sid)
        return sid

    # ---- release ---------------------------------------------------------------------------
    def release(self, ids: List[int], parks: List[Tuple[int, Parked]], cells: int) -> None:
        """A job ended: clear `ids`, park `parks` (id, Parked), return its cells."""
        self.free.extend(ids)
        self._changes.extend(KvChange(KvOp.CLEAR, s) for s in ids)
        for sid, p in parks:
            self.parked[sid] = p  # the most recently used, last
        self.reserved -= cells

    def drop_parked(self) -> List[int]:
        """Forget every parked sequence (their clears are queued); returns their ids."""
        ids = list(self.parked)
        self.parked.clear()
        self.free.extend(ids)
        self._changes.extend(KvChange(KvOp.CLEAR, s) for s in ids)
        return ids

    def next_change(self) -> KvChange:
        """The oldest queued KV change; it stays queued until change_done()."""
        return self._changes[0]

    def change_done(self) -> None:
        """The oldest queued change was made."""
        del self._changes[0]

    def take_changes(self) -> List[KvChange]:
        """All queued KV changes, in order, dequeued (for planners without a backend, e.g. tests)."""
        out, self._changes = self._changes, []
        return out

    # ---- state -----------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return bool(self._changes)

    @property
    def parked_cells(self) -> int:
        """KV cells the parked sequences hold."""
        return sum(p.cells for p in self.parked.values())
