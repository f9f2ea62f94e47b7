"""Layer 0: one branch set decoded to completion with no threads (mlx-lm's `generate_step` shape).

`generate_step` drives the engine's own planner (Scheduler over a SequencePool) for one job on a
backend the caller owns, so its batches are the engine's batches and its tokens the engine's
tokens. The pieces a step is made of (`make_changes`, `copy_prefix`, `choose`) are the ones the
engine thread runs for every request of its batches.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np

from ..decoding.combination import Combination
from ..decoding.params import GenerationParams
from ..decoding.rng import SplitMix64
from ..decoding.sampling import Choice
from ..decoding.strength import guarded, penalised
from ..errors import InvalidParameterError
from .pool import KvOp, SequencePool
from .scheduler import Action, Job, Scheduler

__all__ = ["choose", "copy_prefix", "generate_step", "make_changes"]


def make_changes(backend, pool: SequencePool, scheduler: Scheduler) -> None:
    """Make the pool's queued KV changes in order; each leaves the queue only once made."""
    while pool.pending:
        c = pool.next_change()
        if c.op is KvOp.CLEAR:
            backend.seq_remove(c.seq_id)
        elif (backend.seq_pos_max(c.seq_id) + 1 < c.pos  # cleared behind the planner's back
              or _window_lost(backend, c.seq_id, c.pos)
              or backend.seq_remove(c.seq_id, c.pos, -1) is False):  # a cache that cannot cut
            backend.seq_remove(c.seq_id)
            scheduler.cold(c.job, c.branch)
        pool.change_done()


def _window_lost(backend, seq_id: int, pos: int) -> bool:
    """A sliding-window cache no longer holds the window before `pos` (llama.cpp's own server test)."""
    n_swa = backend.n_swa
    return bool(n_swa) and backend.seq_pos_min(seq_id) > max(0, pos - n_swa)


def copy_prefix(backend, job: Job) -> None:
    """Branch 0 holds exactly the shared prefix: copy it to the other branches' sequences."""
    first, *rest = job.seqs
    for s in rest:  # a whole-sequence copy works in split caches too
        backend.seq_copy(first.seq_id, s.seq_id, -1, -1)


def choose(backend, chooser, rows: Sequence[int], combination: Combination, params: GenerationParams,
           rng: SplitMix64, history: Sequence[int]) -> Choice:
    """Combine and sample one request's logits rows (batch indices, branch order)."""
    logits = tuple(backend.logits_row(r) for r in rows)
    combination, on = guarded(combination, params, history)
    if not on:
        return chooser.choose(logits, combination, params, rng, history)
    n = backend.n_vocab
    logits = tuple(penalised(np.ctypeslib.as_array(z, shape=(n,)) if not isinstance(z, np.ndarray) else z, history)
                   if m else z for z, m in zip(logits, combination.mix))
    return dataclasses.replace(chooser.choose(logits, combination, params, rng, history), ratio_scale=0.0)


def generate_step(backend, prompts: Sequence[Sequence[int]], combination: Optional[Combination] = None,
                  params: Optional[GenerationParams] = None, chooser=None,
                  seed: Optional[int] = None) -> Iterator[Choice]:
    """Yield the Choice of every generated token of one branch set, decoded on `backend` alone.

    prompts: token ids per branch (branch 0 first); combination: how their rows combine
    (default: plain decoding of one branch). Uses sequences 0..K-1 and clears them at the end.
    """
    params = params or GenerationParams()
    combination = combination or Combination.plain()
    if len(prompts) != combination.k or not all(len(p) for p in prompts):
        raise InvalidParameterError(f"give {combination.k} non-empty prompts for this combination, got "
                                    f"{[len(p) for p in prompts]} tokens")
    if combination.k > backend.n_seq_max:
        raise InvalidParameterError(f"{combination.k} branches need n_seq_max >= {combination.k}")
    if chooser is None:
        from ..decoding.native import make_chooser
        chooser = make_chooser(backend.n_vocab)
    k = combination.k
    pool = SequencePool(k, backend.n_ctx_total, backend.kv_unified, reuse_block=backend.reuse_block)
    scheduler = Scheduler(pool, 1, backend.n_batch, prefill_chunk=backend.n_batch)
    job = Job.for_branches(prompts, params.max_tokens, share_prefix=backend.supports_seq_copy)
    scheduler.enqueue(job)
    scheduler.admit()
    rng = SplitMix64(seed if seed is not None else (params.seed or 0))
    history = []
    for s in range(k):
        backend.seq_remove(s)
    try:
        while True:
            make_changes(backend, pool, scheduler)
            batch = scheduler.plan() or scheduler.plan()
            backend.decode(batch.entries)
            for p in batch.planned:
                if p.action is Action.COPY:
                    copy_prefix(backend, job)
                    scheduler.copied(job)
                elif p.action is Action.SAMPLE:
                    c = choose(backend, chooser, p.rows, combination, params, rng, history)
                    history.append(c.token)
                    yield c
                    if len(history) >= params.max_tokens or (not params.ignore_eos and backend.is_eog(c.token)):
                        return
                    scheduler.sampled(job, c.token)
    finally:
        for s in range(k):
            backend.seq_remove(s)
