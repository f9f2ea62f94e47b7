"""The planner: requests in, batches and post-decode actions out. No model, no threads, no clock.

It owns admission, the sequence ids, KV-cell reservations (unified caches), the prompt cache and
which tokens go into each batch. A request with two prompts runs two sequences, A (principled) and
B (plain): their shared prefix is decoded once in A and copied to B. The runner (engine.py) does
each admitted job's KV preparations (`Job.prep`), decodes what it plans, samples, and reports back
with copied(), sampled(), finish() and end_batch().

Prompt cache: a job that ends normally parks its sequences with their prompt tokens. A new job's
branch adopts the parked sequence with the longest common prefix (its tail trimmed) and prefills
only the rest; parked sequences are evicted least recently used when ids or cells run short.
Generated tokens are never reused, reuse comes in whole blocks (16 in the engine) and at least 2
prompt tokens are always decoded: llama.cpp rounds a token by where it sits in a decode call
(README, "Prompt cache").
"""

from __future__ import annotations

import collections
import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ..backends.base import BatchEntry


class Phase(enum.Enum):
    """Where a request is: QUEUED -> [SHARED ->] PREFILL -> DECODE -> DONE (DONE from anywhere)."""

    QUEUED = "queued"  # waiting for sequence ids (and KV cells)
    SHARED = "shared"  # decoding the prefix both prompts share, in A only
    PREFILL = "prefill"  # the rest of the prompts
    DECODE = "decode"  # every sequence waits for at most its one next token
    DONE = "done"


class Action(enum.Enum):
    """What the runner does for a request after a successful decode."""

    COPY = "copy"  # A holds the shared prefix: copy it to B, then call copied()
    SAMPLE = "sample"  # its logits rows are ready: combine, sample, then call sampled()


class KvOp(enum.Enum):
    """A KV-cache change the runner makes before a newly admitted job decodes."""

    CLEAR = "clear"  # evict a parked sequence: remove all its cells
    TRIM = "trim"  # adopt a parked sequence: remove its cells from `pos` on


@dataclass(frozen=True)
class Parked:
    """A finished job's sequence kept in the KV cache: its prompt tokens (reusable) and its cells."""

    tokens: List[int]
    cells: int


@dataclass(frozen=True)
class Prep:
    op: KvOp
    seq_id: int
    pos: int = -1


def matched(cached: Sequence[int], tokens: Sequence[int], align: int = 1) -> int:
    """Tokens of `tokens` a cached sequence already holds, in whole blocks of `align`, leaving at
    least two to decode."""
    n = min(len(cached), len(tokens) - 2)
    i = 0
    while i < n and cached[i] == tokens[i]:
        i += 1
    return max(i - i % align, 0)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix, leaving at least two tokens of each to decode after the copy."""
    n = min(len(a), len(b)) - 2
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return max(i, 0)


@dataclass
class Seq:
    """One KV sequence of a job: its id, the tokens still to decode, and how many are in the cache."""

    seq_id: int
    pending: List[int]
    n_past: int = 0
    tokens: List[int] = field(default_factory=list)  # what its KV cells hold, in order


@dataclass(eq=False)  # identity: two equal prompts are still two jobs
class Job:
    """A request as the planner sees it; `owner` is whatever the runner wants back (its request)."""

    tokens_p: List[int]
    tokens_0: Optional[List[int]] = None  # None: one sequence only
    shared: int = 0
    cells: int = 0  # KV cells both sequences may fill (prompts + max_tokens each)
    owner: object = None
    phase: Phase = Phase.QUEUED
    seqs: List[Seq] = field(default_factory=list)
    cached: Tuple[int, int] = (0, 0)  # prompt tokens taken from the prompt cache (A, B)
    prep: List[Prep] = field(default_factory=list)  # KV changes to make before its first batch

    @classmethod
    def for_prompts(cls, tokens_p: List[int], tokens_0: Optional[List[int]], max_tokens: int,
                    owner: object = None, share_prefix: bool = True) -> "Job":
        """A job with its shared prefix and KV-cell need computed.

        share_prefix=False (a backend whose seq_copy is not exact) decodes both prompts in full.
        """
        shared = common_prefix(tokens_p, tokens_0) if tokens_0 is not None and share_prefix else 0
        cells = len(tokens_p) + max_tokens
        if tokens_0 is not None:
            cells += len(tokens_0) - shared + max_tokens
        return cls(list(tokens_p), None if tokens_0 is None else list(tokens_0), shared, cells, owner)

    @property
    def n_seqs(self) -> int:
        return 1 if self.tokens_0 is None else 2


@dataclass(frozen=True)
class Planned:
    """A job with tokens in a batch; `rows` are the batch indices of its logits rows (A, then B)."""

    job: Job
    action: Optional[Action]
    rows: Tuple[int, ...] = ()


@dataclass
class Batch:
    """One decode call: the entries and, per job in it, what to do once it decoded."""

    entries: List[BatchEntry]
    planned: List[Planned]


class Scheduler:
    """Admission, sequence ids and batch planning for one context.

    Rounds: by default a round is one batch of all decoding jobs, then one batch with the prompt of
    one newcomer (its own decode call keeps logits bit-identical to running alone); with mix_prefill
    a round is one batch of both. plan() returns the round's batches one by one, then None.
    A batch is "in flight" from plan() to end_batch(): sequences freed meanwhile return only then.
    """

    def __init__(self, n_seq_max: int, max_requests: int, n_batch: int, n_ctx_total: int = 0,
                 kv_unified: bool = False, prefill_chunk: int = 256, mix_prefill: bool = False,
                 prompt_cache: bool = False, reuse_align: int = 1):
        self.n_seq_max = n_seq_max
        self.max_requests = max_requests
        self.n_batch = n_batch
        self.n_ctx_total = n_ctx_total
        self.kv_unified = kv_unified
        self.prefill_chunk = prefill_chunk  # prompt tokens per batch while others decode
        self.mix_prefill = mix_prefill
        self.queue: Deque[Job] = collections.deque()
        self.active: List[Job] = []
        self.free: List[int] = list(range(n_seq_max - 1, -1, -1))  # pop() hands out 0, 1, ...
        self.reserved = 0  # KV cells held by admitted jobs and by frees waiting for end_batch()
        self.in_flight = False
        self._deferred: List[Tuple[List[int], List[Tuple[int, Parked]], int]] = []  # (clear, park, cells)
        self._round: Optional[List[Optional[Phase]]] = None
        self._chunk = n_batch
        self.prompt_cache = prompt_cache
        self.reuse_align = reuse_align  # reuse whole blocks of this many tokens (see matched())
        self.parked: "OrderedDict[int, Parked]" = OrderedDict()  # least recently used first

    # ---- admission ---------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        job.phase = Phase.QUEUED
        self.queue.append(job)

    def admit(self) -> List[Job]:
        """Move queued jobs to active, in order, while slots, sequence ids and KV cells allow.

        Admission may evict or trim parked sequences: the runner makes each job's `prep` changes
        before the next plan(), when no batch is in flight.
        """
        admitted: List[Job] = []
        while self.queue and len(self.active) < self.max_requests:
            job = self.queue[0]
            choice = self._choose(job)
            if choice is None:
                break  # ids or cells still held by running jobs (or a batch in flight)
            self.queue.popleft()
            self._commit(job, *choice)
            self.active.append(job)
            admitted.append(job)
        return admitted

    def _prompts(self, job: Job) -> List[List[int]]:
        return [job.tokens_p] if job.tokens_0 is None else [job.tokens_p, job.tokens_0]

    def _choose(self, job: Job):
        """Which parked sequence each branch adopts, whether B copies A's prefix, what to evict."""
        taken: Dict[int, int] = {}  # parked id -> tokens it gives
        reuse: List[Optional[int]] = []
        free_left = len(self.free)
        for tokens in self._prompts(job):
            sid, n = self._best(tokens, taken) if self.prompt_cache else (None, 0)
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
        copy = job.shared > 0 and all(r is None or taken[r] < job.shared for r in reuse)
        if copy and reuse[1] is not None:
            del taken[reuse[1]]  # B will be a copy of A's prefix: start it clean
            reuse[1] = None
        cells = job.cells + (0 if copy else job.shared)
        evictable = [sid for sid in self.parked if sid not in taken]
        n_evict = max(0, sum(r is None for r in reuse) - len(self.free))
        if n_evict > len(evictable):
            return None
        evict = evictable[:n_evict]
        if self.kv_unified:
            rest = evictable[n_evict:]
            held = sum(self.parked[sid].cells for sid in rest)
            while rest and self.reserved + cells + held > self.n_ctx_total:
                sid = rest.pop(0)
                evict.append(sid)
                held -= self.parked[sid].cells
            if self.reserved and self.reserved + cells + held > self.n_ctx_total:
                return None  # wait for KV cells (a job alone always fits: the runner checks at submit)
        return reuse, taken, copy, evict, cells

    def _best(self, tokens: List[int], taken: Dict[int, int]) -> Tuple[Optional[int], int]:
        """The parked sequence holding the most of `tokens` (the most recently used on ties)."""
        best, best_n = None, 0
        for sid, p in reversed(self.parked.items()):
            if sid in taken:
                continue
            n = matched(p.tokens, tokens, self.reuse_align)
            if n > best_n:
                best, best_n = sid, n
        return best, best_n

    def _commit(self, job: Job, reuse, taken, copy, evict, cells) -> None:
        job.prep = []
        for sid in evict:
            del self.parked[sid]
            self.free.append(sid)
            job.prep.append(Prep(KvOp.CLEAR, sid))
        if not copy:
            job.shared = 0
        job.cells = cells
        self.reserved += cells
        job.seqs = []
        for tokens, sid in zip(self._prompts(job), reuse):
            n = 0
            if sid is None:  # near the other branch: B's adopted id for A, A's id for B
                sid = self._free_id(job.seqs[0].seq_id if job.seqs else reuse[-1])
            else:
                n = taken[sid]
                self.parked.pop(sid)
                job.prep.append(Prep(KvOp.TRIM, sid, n))  # also drops what it generated
            start = job.shared if copy and job.seqs else n  # B after the copy starts at the prefix
            job.seqs.append(Seq(sid, list(tokens[start:]), n, list(tokens[:n])))
        self._note_cached(job)
        if copy:
            job.phase = Phase.SHARED
        else:
            self._settle(job)

    def _free_id(self, near: Optional[int]) -> int:
        """A free sequence id, the closest to `near` (the other branch's id): llama.cpp attends over
        every KV stream between a batch's lowest and highest sequence id (README, "Long context")."""
        if near is None:
            return self.free.pop()
        best = min(range(len(self.free)), key=lambda k: (abs(self.free[k] - near), -k))
        return self.free.pop(best)

    @staticmethod
    def _note_cached(job: Job) -> None:
        job.cached = (job.seqs[0].n_past, job.seqs[1].n_past if len(job.seqs) > 1 else 0)

    def cold(self, job: Job, seq_id: int) -> None:
        """A parked sequence could not be trimmed (the runner cleared it): prefill that branch in full."""
        for s, tokens in zip(job.seqs, self._prompts(job)):
            if s.seq_id == seq_id:
                s.pending, s.n_past, s.tokens = list(tokens), 0, []
        self._note_cached(job)
        if job.phase is not Phase.SHARED:
            self._settle(job)

    # ---- planning ----------------------------------------------------------------------
    def plan(self) -> Optional[Batch]:
        """The next batch of the current round (it is then in flight), or None when the round is over."""
        if self.in_flight:
            raise RuntimeError("plan() while a batch is in flight; call end_batch() first")
        if self._round is None:
            decoding = any(j.phase is Phase.DECODE for j in self.active)
            self._chunk = self.prefill_chunk if decoding else self.n_batch
            self._round = [None] if self.mix_prefill else [Phase.DECODE, Phase.PREFILL]
        while self._round:
            batch = self._build(self._round.pop(0))
            if batch is not None:
                self.in_flight = True
                return batch
        self._round = None
        return None

    def _build(self, stage: Optional[Phase]) -> Optional[Batch]:
        decoding = [j for j in self.active if j.phase is Phase.DECODE]
        prefilling = [j for j in self.active if j.phase in (Phase.SHARED, Phase.PREFILL)]
        if stage is Phase.DECODE:
            jobs = decoding
        elif stage is Phase.PREFILL:
            jobs = prefilling[:1]
        else:
            jobs = decoding + prefilling
        entries: List[BatchEntry] = []
        planned: List[Planned] = []
        limit = None
        for job in jobs:
            if job.phase is not Phase.DECODE and limit is None:
                limit = min(self.n_batch, len(entries) + self._chunk)  # prompts share this budget
            budget = (self.n_batch if job.phase is Phase.DECODE else limit) - len(entries)
            if budget <= 0:
                break
            before = len(entries)
            action = self._take(job, entries, budget)
            if len(entries) > before:  # a job without tokens here is not part of this batch
                n = len(entries)
                rows = tuple(range(n - job.n_seqs, n)) if action is Action.SAMPLE else ()
                planned.append(Planned(job, action, rows))
        return Batch(entries, planned) if entries else None

    def _take(self, job: Job, entries: List[BatchEntry], budget: int) -> Optional[Action]:
        """Append up to `budget` of the job's tokens; return its post-decode action."""
        if job.phase is Phase.SHARED:
            a = job.seqs[0]
            n = min(budget, job.shared - a.n_past)
            entries.extend(BatchEntry(a.pending[k], a.n_past + k, (a.seq_id,)) for k in range(n))
            a.tokens += a.pending[:n]
            del a.pending[:n]
            a.n_past += n
            return Action.COPY if a.n_past == job.shared else None
        takes, left = [], budget
        for s in job.seqs:  # prompt tokens before the last one of each sequence
            takes.append(max(0, min(left, len(s.pending) - 1)))
            left -= takes[-1]
        last = left >= len(job.seqs) and all(len(s.pending) - n == 1 for s, n in zip(job.seqs, takes))
        if not last and budget >= 2 * len(job.seqs):
            # Never leave a last prompt token alone for the next call: llama.cpp rounds a sequence's
            # single-token step differently from a prompt batch (README, "Batching and numerics").
            takes = [n - 1 if n and len(s.pending) - n == 1 else n for s, n in zip(job.seqs, takes)]
        for s, n in zip(job.seqs, takes):
            entries.extend(BatchEntry(s.pending[k], s.n_past + k, (s.seq_id,)) for k in range(n))
            s.tokens += s.pending[:n]
            del s.pending[:n]
            s.n_past += n
            budget -= n
        action = None
        if last:
            for s in job.seqs:  # the last tokens, with logits: A's row first
                entries.append(BatchEntry(s.pending[0], s.n_past, (s.seq_id,), logits=True))
                s.tokens.append(s.pending[0])
                s.pending = []
                s.n_past += 1
            action = Action.SAMPLE
        self._settle(job)
        return action

    def _settle(self, job: Job) -> None:
        job.phase = Phase.DECODE if all(len(s.pending) <= 1 for s in job.seqs) else Phase.PREFILL

    # ---- reports from the runner -------------------------------------------------------
    def copied(self, job: Job) -> None:
        """The runner copied A's cells to B: B now holds the shared prefix too."""
        job.seqs[1].n_past = job.shared
        job.seqs[1].tokens = job.tokens_p[:job.shared]
        self._settle(job)

    def sampled(self, job: Job, token: int) -> None:
        """The next token goes to every sequence of the job."""
        for s in job.seqs:
            s.pending = [token]

    def finish(self, job: Job, park: bool = False) -> List[int]:
        """End a job; returns the sequence ids to clear in the KV cache now (none while in flight).

        park=True (a job that ended normally, with the prompt cache on) keeps its sequences and
        their tokens for later jobs instead of clearing them.
        """
        if job.phase is Phase.DONE:
            return []
        if job.phase is Phase.QUEUED:
            self.queue.remove(job)
            job.phase = Phase.DONE
            return []
        self.active.remove(job)
        park = park and self.prompt_cache
        parks = [(s.seq_id, Parked(s.tokens[:len(t)], len(s.tokens)))
                 for s, t in zip(job.seqs, self._prompts(job)) if park and s.tokens]
        ids = [s.seq_id for s in job.seqs if not (park and s.tokens)]
        job.seqs = []
        job.phase = Phase.DONE
        if self.in_flight:  # the context is decoding: free after end_batch()
            self._deferred.append((ids, parks, job.cells))
            return []
        return self._release(ids, parks, job.cells)

    def end_batch(self) -> List[int]:
        """The batch in flight is done; returns the deferred sequence ids to clear now."""
        self.in_flight = False
        ids: List[int] = []
        for seq_ids, parks, cells in self._deferred:
            ids += self._release(seq_ids, parks, cells)
        self._deferred = []
        return ids

    def _release(self, ids: List[int], parks, cells: int) -> List[int]:
        self.free.extend(ids)
        for sid, p in parks:
            self.parked[sid] = p  # the most recently used, last
        self.reserved -= cells
        return ids

    def drop_parked(self) -> List[int]:
        """Forget every parked sequence; returns their ids, to clear in the KV cache."""
        ids = list(self.parked)
        self.parked.clear()
        self.free.extend(ids)
        return ids

    @property
    def parked_cells(self) -> int:
        """KV cells the parked sequences hold."""
        return sum(p.cells for p in self.parked.values())

    @property
    def has_work(self) -> bool:
        return bool(self.queue or self.active)

    @property
    def releasing(self) -> List[int]:
        """Sequence ids of finished jobs that are freed or parked at end_batch()."""
        return [i for ids, parks, _ in self._deferred for i in ids + [sid for sid, _ in parks]]
