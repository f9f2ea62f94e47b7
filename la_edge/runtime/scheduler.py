"""The planner: requests in, batches and post-decode actions out. No model, no threads, no clock.

A request is a branch set: K >= 1 token lists decoded side by side, one KV sequence each. The
prefix all branches share is decoded once in branch 0 and copied to the others (where the
backend's copy is exact). The planner owns admission, rounds and which tokens go into each batch;
sequence ids, parked sequences, cells and KV changes belong to the `SequencePool` (pool.py). The
runner (engine.py) makes the pool's KV changes before each decode, decodes what it plans, samples,
and reports back with copied(), sampled() and finish().

Prompt cache (pool.py): a job that ends normally parks its sequences with their prompt tokens; a
new job's branch adopts the parked sequence with the longest common prefix and prefills only the
rest. Generated tokens are never reused, reuse comes in whole blocks (the backend's reuse_block)
and at least 2 prompt tokens are always decoded: llama.cpp rounds a token by where it sits in a
decode call (README, "Prompt cache").
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Sequence, Tuple

from ..backends.base import BatchEntry
from .pool import Parked, Placement, SequencePool, cells_needed, matched

__all__ = ["Action", "Batch", "Job", "Phase", "Planned", "Scheduler", "Seq", "common_prefix", "matched"]


class Phase(enum.Enum):
    """Where a request is: QUEUED -> [SHARED ->] PREFILL -> DECODE -> DONE (DONE from anywhere)."""

    QUEUED = "queued"  # waiting for sequence ids (and KV cells)
    SHARED = "shared"  # decoding the prefix every branch shares, in branch 0 only
    PREFILL = "prefill"  # the rest of the prompts
    DECODE = "decode"  # every sequence waits for at most its one next token
    DONE = "done"


class Action(enum.Enum):
    """What the runner does for a request after a successful decode."""

    COPY = "copy"  # branch 0 holds the shared prefix: copy it to the others, then call copied()
    SAMPLE = "sample"  # its logits rows are ready: combine, sample, then call sampled()


def common_prefix(*prompts: Sequence[int]) -> int:
    """Length of the prefix all prompts share, leaving at least two tokens of each to decode."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 2
    i = 0
    while i < n and all(p[i] == prompts[0][i] for p in prompts[1:]):
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
    """A request as the planner sees it: one token list per branch (branch 0 first).

    `owner` is whatever the runner wants back (its request); `cells` is what its branches may fill
    (the shared prefix once), fixed at admission.
    """

    prompts: List[List[int]]
    max_tokens: int
    shared: int = 0
    cells: int = 0
    owner: object = None
    phase: Phase = Phase.QUEUED
    seqs: List[Seq] = field(default_factory=list)
    cached: Tuple[int, ...] = ()  # prompt tokens taken from the prompt cache, per branch

    @classmethod
    def for_branches(cls, prompts: Sequence[Sequence[int]], max_tokens: int, owner: object = None,
                     share_prefix: bool = True) -> "Job":
        """A job with its shared prefix and KV-cell need computed.

        share_prefix=False (a backend whose seq_copy is not exact) decodes every prompt in full.
        """
        if not prompts:
            raise ValueError("a job needs at least one branch")
        prompts = [list(p) for p in prompts]
        shared = common_prefix(*prompts) if share_prefix else 0
        return cls(prompts, max_tokens, shared, cells_needed(prompts, max_tokens, shared), owner,
                   cached=(0,) * len(prompts))

    @property
    def n_seqs(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Planned:
    """A job with tokens in a batch; `rows` are the batch indices of its logits rows, in branch order."""

    job: Job
    action: Optional[Action]
    rows: Tuple[int, ...] = ()


@dataclass
class Batch:
    """One decode call: the entries and, per job in it, what to do once it decoded."""

    entries: List[BatchEntry]
    planned: List[Planned]


class Scheduler:
    """Admission and batch planning for one context over a SequencePool.

    Rounds: by default a round is one batch of all decoding jobs, then one batch with the prompt of
    one newcomer (its own decode call keeps logits bit-identical to running alone); with mix_prefill
    a round is one batch of both. plan() returns the round's batches one by one, then None.
    """

    def __init__(self, pool: SequencePool, max_requests: int, n_batch: int, prefill_chunk: int = 256,
                 mix_prefill: bool = False):
        self.pool = pool
        self.max_requests = max_requests
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk  # prompt tokens per batch while others decode
        self.mix_prefill = mix_prefill
        self.queue: Deque[Job] = collections.deque()
        self.active: List[Job] = []
        self._round: Optional[List[Optional[Phase]]] = None
        self._chunk = n_batch

    # ---- admission ---------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        job.phase = Phase.QUEUED
        self.queue.append(job)

    def admit(self) -> List[Job]:
        """Move queued jobs to active, in order, while slots, sequence ids and KV cells allow.

        The pool queues the evictions and trims admission decides; the runner makes them before
        its next decode.
        """
        admitted: List[Job] = []
        while self.queue and len(self.active) < self.max_requests:
            job = self.queue[0]
            placement = self.pool.place(job.prompts, job.shared, job.max_tokens, job)
            if placement is None:
                break  # ids or cells still held by running jobs (or a batch in flight)
            self.queue.popleft()
            self._start(job, placement)
            self.active.append(job)
            admitted.append(job)
        return admitted

    def _start(self, job: Job, pl: Placement) -> None:
        if not pl.copy:
            job.shared = 0
        job.cells = pl.cells
        job.seqs = []
        for k, (tokens, sid, n) in enumerate(zip(job.prompts, pl.seq_ids, pl.reused)):
            start = job.shared if pl.copy and k else n  # the copies start after the shared prefix
            job.seqs.append(Seq(sid, list(tokens[start:]), n, list(tokens[:n])))
        self._note_cached(job)
        if pl.copy:
            job.phase = Phase.SHARED
        else:
            self._settle(job)

    @staticmethod
    def _note_cached(job: Job) -> None:
        job.cached = tuple(s.n_past for s in job.seqs)

    def cold(self, job: Job, branch: int) -> None:
        """A parked sequence could not be trimmed (the runner cleared it): prefill that branch in full."""
        if job.phase is Phase.DONE:
            return
        s = job.seqs[branch]
        s.pending, s.n_past, s.tokens = list(job.prompts[branch]), 0, []
        self._note_cached(job)
        if job.phase is not Phase.SHARED:
            self._settle(job)

    # ---- planning ----------------------------------------------------------------------
    def plan(self) -> Optional[Batch]:
        """The next batch of the current round, or None when the round is over."""
        if self._round is None:
            decoding = any(j.phase is Phase.DECODE for j in self.active)
            self._chunk = self.prefill_chunk if decoding else self.n_batch
            self._round = [None] if self.mix_prefill else [Phase.DECODE, Phase.PREFILL]
        while self._round:
            batch = self._build(self._round.pop(0))
            if batch is not None:
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
        return _by_sequence(Batch(entries, planned)) if entries else None

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
            for s in job.seqs:  # the last tokens, with logits (_by_sequence orders the batch)
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
        """The runner copied branch 0's cells to the others: they hold the shared prefix too."""
        for s, tokens in zip(job.seqs[1:], job.prompts[1:]):
            s.n_past = job.shared
            s.tokens = tokens[:job.shared]
        self._settle(job)

    def sampled(self, job: Job, token: int) -> None:
        """The next token goes to every sequence of the job."""
        for s in job.seqs:
            s.pending = [token]

    def finish(self, job: Job, park: bool = False) -> None:
        """End a job; its sequences are cleared (or parked) by the pool.

        park=True (a job that ended normally, with the prompt cache on) keeps its sequences and
        their prompt tokens for later jobs instead of clearing them.
        """
        if job.phase is Phase.DONE:
            return
        if job.phase is Phase.QUEUED:
            self.queue.remove(job)
            job.phase = Phase.DONE
            return
        self.active.remove(job)
        park = park and self.pool.prompt_cache
        parks = [(s.seq_id, Parked(s.tokens[:len(t)], len(s.tokens)))
                 for s, t in zip(job.seqs, job.prompts) if park and s.tokens]
        ids = [s.seq_id for s in job.seqs if not (park and s.tokens)]
        job.seqs = []
        job.phase = Phase.DONE
        self.pool.release(ids, parks, job.cells)

    @property
    def has_work(self) -> bool:
        return bool(self.queue or self.active)


def _by_sequence(batch: Batch) -> Batch:
    """The batch's entries in ascending sequence id (each sequence's own order kept), rows remapped.

    With split KV streams llama.cpp puts only ascending, consecutive sequence ids in one ubatch
    (`split_equal`): a step ordered (1, 0) ran as two forward passes (README, "Performance")."""
    order = sorted(range(len(batch.entries)), key=lambda i: batch.entries[i].seq_ids[0])
    if order == list(range(len(order))):
        return batch
    at = {old: new for new, old in enumerate(order)}
    planned = [Planned(p.job, p.action, tuple(at[r] for r in p.rows)) for p in batch.planned]
    return Batch([batch.entries[i] for i in order], planned)
