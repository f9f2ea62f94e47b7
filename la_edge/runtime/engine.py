"""The engine: a small runner over the Scheduler (scheduler.py), its SequencePool (pool.py) and
one backend context.

The scheduler plans each batch under the lock; the runner makes the pool's pending KV changes,
decodes the batch, reads each request's K logits rows and samples with the lock released ("in
flight"), then applies the results under the lock. Cancels during a decode free their sequences
after it. A failure while decoding or sampling ends only the requests of that batch; if the runner
itself breaks, every open and later request gets EngineUnavailableError instead of waiting.
Every vocabulary call holds a lease on the backend, so close() never frees it under one.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple, Union

from ..errors import (BusyError, ContextOverflowError, EngineUnavailableError, InvalidParameterError,
                      LaEdgeError, RequestTimeoutError, StepFailedError)
from ..decoding.params import GenerationParams
from ..decoding.rng import SplitMix64
from .branches import BranchSet, tokenize_branches
from .pool import KvOp, SequencePool
from .prompts import PromptPair, tokenize_text
from .scheduler import Action, Batch, Job, Phase, Scheduler

__all__ = ["Engine", "RequestHandle", "StepEvent"]

_WAIT_S = 0.5  # every wait on the condition is bounded by this and then re-checks its predicate
_IDLE_S = 0.002  # a round that could run nothing waits this long before the next (no spinning)
_CANCEL_WAIT_S = 2.0  # a cancel() that cannot take the lock this fast is queued instead


class _OwnedLock:
    """A plain (non-reentrant) lock that knows which thread holds it.

    A cancel() can run inside the engine's own locked code: a garbage-collected generator's
    `finally` calls it in whatever thread collects. The engine then queues the cancel instead.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.owner: Optional[int] = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            self.owner = threading.get_ident()
        return ok

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def _is_owned(self) -> bool:  # used by threading.Condition
        return self.owner == threading.get_ident()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


@dataclass(frozen=True)
class StepEvent:
    """One generated token and its diagnostics; `finish_reason` is set on the last one.

    piece: the token's own bytes; eog: it ends generation (its text is then empty);
    top_pieces: the bytes of each `top` alternative.
    ratio_scale: the adaptive ratio's factor at this step (1.0 with a fixed ratio).
    """

    token: int
    logprob: Optional[float]
    top: Tuple[Tuple[int, float], ...]
    nucleus_size: int
    finish_reason: Optional[str] = None
    piece: bytes = b""
    eog: bool = False
    top_pieces: Tuple[bytes, ...] = ()
    ratio_scale: float = 1.0


@dataclass(eq=False)
class _Request:
    rid: int
    branches: BranchSet
    params: GenerationParams
    job: Job
    rng: SplitMix64
    seed: int
    history: List[int] = field(default_factory=list)
    events: Deque[StepEvent] = field(default_factory=collections.deque)
    finish_reason: Optional[str] = None  # set once: the request is over
    error: Optional[BaseException] = None
    deadline: Optional[float] = None  # time.monotonic() past which it ends with RequestTimeoutError
    t_submit: float = 0.0
    t_start: float = 0.0
    t_first: float = 0.0
    t_end: float = 0.0


class RequestHandle:
    """A submitted request: iterate it for StepEvents; cancel() frees its sequences."""

    def __init__(self, engine: "Engine", req: _Request):
        self._engine = engine
        self._req = req

    @property
    def branches(self) -> BranchSet:
        return self._req.branches

    @property
    def branch_tokens(self) -> Tuple[int, ...]:
        """Prompt tokens of each branch."""
        return tuple(len(p) for p in self._req.job.prompts)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of branch 0 (the principled prompt)."""
        return len(self._req.job.prompts[0])

    @property
    def plain_prompt_tokens(self) -> int:
        ref = self._req.branches.combination.ref
        return 0 if ref is None else len(self._req.job.prompts[ref])

    @property
    def shared_prefix_tokens(self) -> int:
        return self._req.job.shared

    @property
    def cached_tokens(self) -> Tuple[int, int]:
        """Prompt tokens taken from the prompt cache: (principled, plain)."""
        job, ref = self._req.job, self._req.branches.combination.ref
        return job.cached[0], (0 if ref is None else job.cached[ref])

    @property
    def seed(self) -> int:
        return self._req.seed

    @property
    def finish_reason(self) -> Optional[str]:
        return self._req.finish_reason

    def timings(self) -> Dict[str, float]:
        """Seconds: queued, prefill (to first token), decode (after it), total."""
        r = self._req
        end = r.t_end or time.perf_counter()
        first = r.t_first or end
        start = r.t_start or end
        n = max(len(r.history) - 1, 0)
        decode = end - first
        return {
            "queued_s": start - r.t_submit,
            "prefill_s": first - start,
            "decode_s": decode,
            "total_s": end - r.t_submit,
            "decode_tokens_per_s": (n / decode) if decode > 0 and n else 0.0,
        }

    def cancel(self) -> None:
        """End the request now, from any thread; nothing of it is kept for the prompt cache."""
        self._engine.cancel(self._req)

    def stop(self) -> None:
        """End it as finished on a stop string: its prompt sequences are parked like any finished one."""
        self._engine.cancel(self._req, reason="stop")

    def __iter__(self):
        req = self._req
        while True:
            ev = self._engine.next_event(req)
            if ev is None:
                return
            yield ev


def _step_error(exc: BaseException) -> BaseException:
    """Typed errors (DecodeError and the rest of LaEdgeError) stay; anything else is wrapped."""
    if isinstance(exc, LaEdgeError):
        return exc
    return StepFailedError(f"step failed: {type(exc).__name__}: {exc}", cause=exc)


def _check_chunk(name: str, value: int, max_branches: int) -> None:
    """A request's final prompt tokens of every branch share one batch, never a last token alone."""
    if value < 2 * max_branches:
        raise InvalidParameterError(
            f"{name}={value} is too small for max_branches={max_branches}: a request's last prompt "
            f"tokens of every branch share one batch; use {name} >= {2 * max_branches}")


@dataclass
class _Profile:
    """Host time per decode step: inside the native forward pass, in the sampler, and the rest
    (batch filling, bookkeeping, locks and thread hand-offs)."""

    steps: int = 0
    tokens: int = 0
    decode_s: float = 0.0
    choose_s: float = 0.0
    wall_s: float = 0.0  # from the end of the previous step of a busy stretch (or this decode's start)

    def as_dict(self) -> Dict[str, float]:
        host = max(self.wall_s - self.decode_s - self.choose_s, 0.0)
        per = 1000.0 / self.steps if self.steps else 0.0
        return {"steps": self.steps, "tokens": self.tokens, "decode_s": self.decode_s,
                "choose_s": self.choose_s, "host_s": host, "wall_s": self.wall_s,
                "decode_ms_per_step": self.decode_s * per, "choose_ms_per_step": self.choose_s * per,
                "host_ms_per_step": host * per,
                "outside_decode_ms_per_step": (self.wall_s - self.decode_s) * per}


class Engine:
    """Schedules requests of up to `max_branches` branches over one backend context; every batch
    is one decode call."""

    def __init__(self, backend, max_requests: int = 1, max_queue: int = 16, prefer_native: bool = True,
                 prefill_chunk: int = 256, mix_prefill: bool = False, prompt_cache: bool = True,
                 max_branches: int = 2):
        from ..decoding.native import make_chooser

        if not isinstance(max_branches, int) or max_branches < 1:
            raise InvalidParameterError(f"max_branches must be a positive integer, got {max_branches!r}")
        if max_requests < 1 or max_requests * max_branches > backend.n_seq_max:
            raise InvalidParameterError(
                f"max_requests={max_requests} x max_branches={max_branches} needs n_seq_max >= "
                f"{max_requests * max_branches}, the context has {backend.n_seq_max}")
        _check_chunk("n_batch", backend.n_batch, max_branches)
        _check_chunk("prefill_chunk", prefill_chunk, max_branches)
        if backend.n_batch < max_requests * max_branches:
            raise InvalidParameterError(
                f"n_batch={backend.n_batch} cannot decode max_requests={max_requests} x "
                f"max_branches={max_branches} sequences in one step; raise n_batch or lower them")
        self.backend = backend
        self.max_queue = max_queue
        self.max_branches = max_branches
        self.chooser = make_chooser(backend.n_vocab, prefer_native=prefer_native)
        # The pool hands out max_requests x max_branches ids (parked ones included).
        self.pool = SequencePool(max_requests * max_branches, backend.n_ctx_total, backend.kv_unified,
                                 prompt_cache=prompt_cache, reuse_block=backend.reuse_block)
        self.scheduler = Scheduler(self.pool, max_requests, backend.n_batch, prefill_chunk, mix_prefill)
        self._lock = _OwnedLock()  # guards the scheduler, the pool and the requests; never held in a decode
        self._cond = threading.Condition(self._lock)
        self._cancels: Deque[Tuple[_Request, str]] = collections.deque()  # queued while the lock was busy
        self._ids = itertools.count()
        self._open: Dict[int, _Request] = {}
        self._background: Optional[threading.Thread] = None
        self._closed = False
        self._failure: Optional[BaseException] = None
        self._leases = 0  # vocabulary calls running now (see lease())
        self._profile = _Profile()
        self._last_end: Optional[float] = None
        self.steps = 0  # decode calls so far
        for s in range(backend.n_seq_max):  # the engine owns the KV cache: start from an empty one
            backend.seq_remove(s)

    # ---- configuration -----------------------------------------------------------------------
    @property
    def max_requests(self) -> int:
        return self.scheduler.max_requests

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per batch while others decode."""
        return self.scheduler.prefill_chunk

    @prefill_chunk.setter
    def prefill_chunk(self, value: int) -> None:
        _check_chunk("prefill_chunk", value, self.max_branches)
        self.scheduler.prefill_chunk = value

    @property
    def mix_prefill(self) -> bool:
        """One decode call per step for prompts and decodes together, at the cost of exactness."""
        return self.scheduler.mix_prefill

    @mix_prefill.setter
    def mix_prefill(self, value: bool) -> None:
        self.scheduler.mix_prefill = value

    # ---- state -------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True until stop() or a failure of the runner itself."""
        return not self._closed and self._failure is None

    @property
    def failure(self) -> Optional[BaseException]:
        """What broke the runner, if anything did."""
        return self._failure

    @property
    def decode_in_flight(self) -> bool:
        """A decode (or its sampling) runs now; the context must not be freed meanwhile."""
        return self.scheduler.in_flight and self._failure is None

    @property
    def prompt_cache(self) -> bool:
        """Finished requests park their sequences for later prompts that start the same way."""
        return self.pool.prompt_cache

    @property
    def n_active(self) -> int:
        return len(self.scheduler.active)

    @property
    def n_queued(self) -> int:
        return len(self.scheduler.queue)

    def profile(self, reset: bool = False) -> Dict[str, float]:
        """Host time per decode step (see _Profile); reset=True starts a new count after reading."""
        with self._cond:
            out = self._profile.as_dict()
            if reset:
                self._profile = _Profile()
            return out

    def used_sequences(self) -> List[int]:
        """Sequences that hold KV cells now (should be empty when idle); waits out a decode in flight."""
        with self._cond:
            return self._used()

    def _used(self) -> List[int]:
        """used_sequences() with the lock held."""
        self._wait_until(lambda: not self.decode_in_flight, 30.0)
        self._apply_changes()
        return [s for s in range(self.backend.n_seq_max) if self.backend.seq_pos_max(s) >= 0]

    def parked_sequences(self) -> List[int]:
        """Sequences the prompt cache holds for later requests (least recently used first)."""
        with self._cond:
            return list(self.pool.parked)

    def leaked_sequences(self) -> List[int]:
        """Sequences holding KV cells that no request runs on and the cache does not hold (should be [])."""
        with self._cond:
            used = self._used()
            held = {s.seq_id for j in self.scheduler.active for s in j.seqs} | set(self.pool.parked)
            return [s for s in used if s not in held]

    def cache_stats(self) -> Dict[str, object]:
        """The prompt cache: on or off, parked and running sequences, parked cells, the bound."""
        with self._cond:
            pool = self.pool
            return {"enabled": pool.prompt_cache, "parked_sequences": len(pool.parked),
                    "running_sequences": sum(len(j.seqs) for j in self.scheduler.active),
                    "parked_cells": pool.parked_cells, "max_sequences": pool.n_seq,
                    "kv_cells": self.backend.n_ctx_total}

    def kv_stats(self) -> Dict[str, int]:
        """KV cells: all of them, reserved by running requests (prompt + max_tokens per branch), held by
        the prompt cache, and free; and the sequences free."""
        with self._cond:
            pool = self.pool
            total, parked = self.backend.n_ctx_total, pool.parked_cells
            return {"cells": total, "cells_in_use": pool.reserved + parked, "cells_running": pool.reserved,
                    "cells_parked": parked, "cells_free": max(total - pool.reserved - parked, 0),
                    "sequences": pool.n_seq, "sequences_free": len(pool.free)}

    def clear_cache(self) -> int:
        """Drop every parked sequence now (waits out a decode in flight); returns how many."""
        with self._cond:
            self._wait_until(lambda: not self.scheduler.in_flight, 30.0)
            if self.scheduler.in_flight:
                return 0
            n = len(self.pool.drop_parked())
            self._apply_changes()
            return n

    # ---- the backend's vocabulary, leased ------------------------------------------------------
    @contextlib.contextmanager
    def lease(self):
        """Hold the backend for a vocabulary call: close() frees it only after every lease ends."""
        with self._cond:
            if self._closed:
                raise EngineUnavailableError("engine stopped")
            self._leases += 1
        try:
            yield self.backend
        finally:
            with self._cond:
                self._leases -= 1
                self._cond.notify_all()

    def tokenize_prompt(self, text: str) -> List[int]:
        """Tokens of a rendered prompt, with BOS added only where the model wants it and the text lacks it."""
        with self.lease() as b:
            return tokenize_text(b, text)

    def token_bytes(self, token: int) -> bytes:
        with self.lease() as b:
            return b.token_bytes(token)

    # ---- submission --------------------------------------------------------------------------
    def submit(self, branches: Union[BranchSet, PromptPair], params: GenerationParams) -> RequestHandle:
        """Validate sizes and enqueue; raises ContextOverflowError, BusyError or EngineUnavailableError.

        A PromptPair means Linear Alignment at params.ratio (BranchSet.from_pair).
        """
        if isinstance(branches, PromptPair):
            branches = BranchSet.from_pair(branches, params.ratio)
        if branches.k > self.max_branches:
            raise InvalidParameterError(
                f"the request has {branches.k} branches but the engine allows max_branches="
                f"{self.max_branches}; use fewer principles or load with a larger max_branches")
        with self.lease() as b:
            prompts = tokenize_branches(b, branches)
        for k, p in enumerate(prompts):
            if not p:  # nothing to decode: such a job would never produce a logits row
                raise InvalidParameterError(
                    f"the {branches.branches[k].role} prompt (branch {k}) has no tokens; give a non-empty prompt")
        # A sliding-window cache's seq_copy is not exact: such backends decode every prompt in full.
        job = Job.for_branches(prompts, params.max_tokens, share_prefix=self.backend.supports_seq_copy)
        longest = max(len(p) for p in prompts)
        n_ctx = self.backend.n_ctx
        if longest + params.max_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt ({longest} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"window n_ctx={n_ctx}; shorten the prompt, lower max_tokens or raise n_ctx")
        total = self.backend.n_ctx_total
        if self.backend.kv_unified and job.cells > total:
            raise ContextOverflowError(
                f"the {job.n_seqs} sequences need {job.cells} KV cells (prompts of "
                f"{'+'.join(str(len(p)) for p in prompts)} tokens, {job.shared} shared, + "
                f"{job.n_seqs}x{params.max_tokens} generated) but the unified cache has {total}; "
                f"lower max_tokens")
        seed = params.seed if params.seed is not None else SplitMix64().next_u64()
        now = time.perf_counter()
        timeout = params.timeout
        req = _Request(rid=next(self._ids), branches=branches, params=params, job=job, rng=SplitMix64(seed),
                       seed=seed, t_submit=now,
                       deadline=None if timeout is None else time.monotonic() + timeout)
        job.owner = req
        with self._cond:
            self._check_available()
            self._drain_cancels()
            self._admit()
            if len(self.scheduler.queue) >= self.max_queue:
                raise BusyError(f"engine busy: {self.n_active} running, {self.n_queued} queued")
            self.scheduler.enqueue(job)
            self._open[req.rid] = req
            self._admit()  # takes free sequences now, even while a decode runs
            self._cond.notify_all()
        return RequestHandle(self, req)

    def _check_available(self) -> None:
        if self._failure is not None:
            raise EngineUnavailableError(f"engine failed: {self._failure!r}", cause=self._failure)
        if self._closed:
            raise EngineUnavailableError("engine stopped")

    def _admit(self) -> None:
        """Admit queued jobs (lock held; a decode may be in flight): their KV changes wait in the pool.

        Not while a job that ended during the batch in flight (a stop string) waits to park: a next
        turn sent at once would miss its sequences. The next round admits it.
        """
        if self.pool.parks_pending:
            return
        for job in self.scheduler.admit():
            job.owner.t_start = time.perf_counter()
        self._apply_changes()

    def _apply_changes(self) -> None:
        """Make the pool's pending KV changes (lock held); only between decodes."""
        if self.scheduler.in_flight or not self.pool.pending:
            return
        for c in self.pool.take_changes():
            if c.op is KvOp.CLEAR:
                self.backend.seq_remove(c.seq_id)
            elif (self.backend.seq_pos_max(c.seq_id) + 1 < c.pos  # cleared behind the engine's back
                  or self._window_lost(c.seq_id, c.pos)
                  or self.backend.seq_remove(c.seq_id, c.pos, -1) is False):  # a cache that cannot cut
                self.backend.seq_remove(c.seq_id)
                self.scheduler.cold(c.job, c.branch)

    def _window_lost(self, seq_id: int, pos: int) -> bool:
        """A sliding-window cache no longer holds the window before `pos` (llama.cpp's own server test)."""
        n_swa = self.backend.n_swa
        return bool(n_swa) and self.backend.seq_pos_min(seq_id) > max(0, pos - n_swa)

    # ---- lifecycle ---------------------------------------------------------------------------
    def cancel(self, req: _Request, reason: str = "cancelled") -> None:
        """End a request now; sequences in a decode in flight are freed right after it.

        reason="stop" (a stop string was found) parks its prompt sequences like a finished request.
        From inside the engine's locked code (a finalizer) or when the lock stays busy, the cancel
        is queued and done at the engine's next locked section instead: it never deadlocks.
        """
        if self._lock.owner == threading.get_ident() or not self._lock.acquire(timeout=_CANCEL_WAIT_S):
            self._cancels.append((req, reason))
            return
        try:
            self._drain_cancels()
            self._finish(req, reason)
        finally:
            self._lock.release()

    def _drain_cancels(self) -> None:
        """Do the queued cancels (lock held)."""
        while self._cancels:
            self._finish(*self._cancels.popleft())

    def _expire(self) -> None:
        """End the requests past their deadline (lock held)."""
        now = time.monotonic()
        for req in [r for r in self._open.values() if r.deadline is not None and now >= r.deadline]:
            self._finish(req, "error", RequestTimeoutError(
                f"request timed out after {req.params.timeout:g} s ({len(req.history)} tokens generated); "
                f"raise the timeout or lower max_tokens"))

    def _finish(self, req: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        if req.finish_reason is not None:
            return
        req.finish_reason = reason
        req.error = error
        req.t_end = time.perf_counter()
        self._open.pop(req.rid, None)
        # Only a request that ended normally parks its sequences: nothing half-written is kept.
        self.scheduler.finish(req.job, park=reason in ("stop", "length"))
        self._apply_changes()
        self._cond.notify_all()

    def _wait_until(self, ready, timeout: float) -> bool:
        """Wait on the condition (lock held) in bounded slices until ready() or the timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, _WAIT_S))
        return True

    # ---- one round ---------------------------------------------------------------------------
    def step(self) -> bool:
        """One scheduling round; False when there was nothing to decode.

        Running requests decode together in one batch. A newcomer's prompt (at most
        prefill_chunk tokens per step while others run) goes in that same batch when
        mix_prefill is on; by default it gets its own call, which keeps every request's
        logits bit-identical to running alone (see README, "Batching and numerics").
        """
        try:
            return self._step()
        except Exception as exc:  # a bug outside the per-batch guards: the engine is unusable
            self._die(exc)
            raise EngineUnavailableError(f"engine failed: {exc!r}", cause=exc) from exc

    def _step(self) -> bool:
        ran = False
        while True:
            with self._cond:
                # Another thread's batch must finish first; a stopped engine plans nothing.
                while self.scheduler.in_flight and self.alive:
                    self._cond.wait(_WAIT_S)
                if not self.alive:
                    return ran
                self._drain_cancels()
                self._expire()
                if not ran:
                    self._admit()
                self._apply_changes()
                batch = self.scheduler.plan()
                if batch is None:
                    if not ran:
                        self._last_end = None  # idle: the next step starts a new busy stretch
                    return ran
            self._execute(batch)
            ran = True

    def _execute(self, batch: Batch) -> None:
        """Decode and sample without the lock, then apply the results and end the batch under it."""
        error: Optional[BaseException] = None
        choices: Dict[int, object] = {}
        t0 = time.perf_counter()
        try:
            self.backend.decode(batch.entries)
        except BaseException as exc:  # an interrupt fails this batch, then propagates
            error = exc
        t1 = time.perf_counter()
        if error is None:
            for i, p in enumerate(batch.planned):
                if p.action is Action.SAMPLE and p.job.phase is not Phase.DONE:
                    choices[i] = self._choose(p.job.owner, p.rows)
        t2 = time.perf_counter()
        interrupt = error if error is not None and not isinstance(error, Exception) else None
        with self._cond:
            try:
                self.steps += 1
                for i, p in enumerate(batch.planned):
                    req = p.job.owner
                    if req.finish_reason is not None:
                        continue  # cancelled during the decode
                    if error is not None:
                        self._finish(req, "error", _step_error(error))
                    elif p.action is Action.COPY:
                        self._copy(req)
                    elif p.action is Action.SAMPLE:
                        out = choices[i]
                        if isinstance(out, BaseException):
                            interrupt = interrupt or (None if isinstance(out, Exception) else out)
                            self._finish(req, "error", _step_error(out))
                        else:
                            self._emit(req, out)
            finally:
                self._drain_cancels()  # queued during the decode or the loop above
                self.scheduler.end_batch()
                self._apply_changes()
                self._note_profile(t0, t1, t2, len(choices))
                self._cond.notify_all()
        if interrupt is not None:
            raise interrupt

    def _note_profile(self, t0: float, t1: float, t2: float, n_tokens: int) -> None:
        end = time.perf_counter()
        prof = self._profile
        prof.steps += 1
        prof.tokens += n_tokens
        prof.decode_s += min(self.backend.last_forward_s, t1 - t0)
        prof.choose_s += t2 - t1
        prof.wall_s += end - (self._last_end if self._last_end is not None else t0)
        self._last_end = end

    def _choose(self, req: _Request, rows: Tuple[int, ...]):
        """The sampled choice for one request, or the exception that stopped it."""
        try:
            logits = tuple(self.backend.logits_row(r) for r in rows)
            return self.chooser.choose(logits, req.branches.combination, req.params, req.rng, req.history)
        except BaseException as exc:  # reported per request by _execute
            return exc

    def _copy(self, req: _Request) -> None:
        seqs = req.job.seqs
        try:
            # Branch 0 holds exactly the shared prefix now; a whole-sequence copy works in split caches too.
            for s in seqs[1:]:
                self.backend.seq_copy(seqs[0].seq_id, s.seq_id, -1, -1)
        except Exception as exc:
            self._finish(req, "error", _step_error(exc))
            return
        self.scheduler.copied(req.job)

    def _emit(self, req: _Request, choice) -> None:
        tok = choice.token
        req.history.append(tok)
        if len(req.history) == 1:
            req.t_first = time.perf_counter()
        reason = None
        eog = self.backend.is_eog(tok)
        if not req.params.ignore_eos and eog:
            reason = "stop"
        elif len(req.history) >= req.params.max_tokens:
            reason = "length"
        top = tuple(self.backend.token_bytes(t) for t, _ in choice.top)
        req.events.append(StepEvent(tok, choice.logprob, choice.top, choice.nucleus_size, reason,
                                    self.backend.token_bytes(tok), eog, top, choice.ratio_scale))
        if reason:
            self._finish(req, reason)
        else:
            self.scheduler.sampled(req.job, tok)

    # ---- failure -----------------------------------------------------------------------------
    def _die(self, exc: BaseException) -> None:
        with self._cond:
            self._record_failure(exc)

    def _record_failure(self, exc: BaseException) -> None:
        """The runner broke: fail every open request at once and clear the cache (no decode runs now)."""
        if self._failure is not None:
            return
        self._failure = exc
        err = EngineUnavailableError(f"engine failed: {exc!r}", cause=exc)
        for req in list(self._open.values()):
            req.finish_reason, req.error, req.t_end = "error", err, time.perf_counter()
        self._open.clear()
        self.pool.drop_parked()
        self.pool.take_changes()
        for s in range(self.backend.n_seq_max):
            try:
                self.backend.seq_remove(s)
            except Exception:  # best effort: the engine is already marked failed
                pass
        self._cond.notify_all()

    # ---- the stepping loop -------------------------------------------------------------------
    def next_event(self, req: _Request) -> Optional[StepEvent]:
        """The request's next event (None at its end); drives the stepping loop itself unless a
        background runner does."""
        while True:
            with self._cond:
                self._drain_cancels()
                if req.events:
                    return req.events.popleft()
                if req.finish_reason is not None:
                    if req.error is not None and req.finish_reason == "error":
                        err, req.error = req.error, None
                        raise err
                    return None
                self._expire()
                t = self._background
                if t is not None and not t.is_alive() and self.alive:
                    self._record_failure(RuntimeError("the engine thread exited"))
                    continue
                if t is not None or self.scheduler.in_flight or not self.alive:
                    self._cond.wait(_WAIT_S)
                    continue
            self._round()

    def _round(self) -> None:
        """One pass of the stepping loop (the background thread's, or a consumer's without one)."""
        try:
            ran = self.step()
        except EngineUnavailableError:
            return  # the failure is recorded; every request now holds it
        if not ran:
            with self._cond:
                self._cond.wait(_IDLE_S)  # nothing could run this round; do not spin

    def start(self) -> None:
        """Run the stepping loop in a background thread (for servers and concurrent callers); idempotent."""
        with self._cond:
            self._check_available()
            if self._background is not None:
                return
            self._background = threading.Thread(target=self._loop, name="la-edge-engine", daemon=True)
            self._background.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the engine for good; open requests end as "cancelled" and later submits raise.

        Waits (at most `timeout` seconds) for the background thread, the decode in flight and the
        vocabulary calls running. Returns True when none is left (later leases are refused), so the
        backend may be freed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            t = self._background
        if t is not None and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._wait_until(lambda: not self.decode_in_flight, max(0.0, deadline - time.monotonic()))
            self._cancels.clear()  # every open request ends here anyway
            for req in list(self._open.values()):
                self._finish(req, "cancelled")
            self._wait_until(lambda: self._leases == 0, max(0.0, deadline - time.monotonic()))
            idle = not self.decode_in_flight and not (t is not None and t.is_alive()) and self._leases == 0
            if idle:
                self.pool.drop_parked()  # a stopped engine leaves the KV cache empty
                self._apply_changes()
            return idle

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self.alive:
                        return
                    self._drain_cancels()
                    self._expire()
                    if not self.scheduler.has_work:
                        self._cond.wait(_WAIT_S)
                        continue
                self._round()
        except BaseException as exc:  # whatever ends this thread is recorded
            self._die(exc)
