"""The engine: one thread owns the scheduler (scheduler.py), its SequencePool (pool.py), the
backend's KV cache and the sampler (vLLM's EngineCore shape).

Other threads talk to it through one command queue (add, end, call), drained between decode
steps, and read each request's events from that request's own output queue. No lock guards
engine state. A caller's cancel() marks the request ended at once (first writer wins) and the
engine frees its sequences at its next step. A failure while decoding or sampling ends only the
requests of that batch; if the engine thread itself breaks, every open and later request gets
EngineUnavailableError. Vocabulary calls from other threads hold a lease (leases.py).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from ..errors import (BusyError, ContextOverflowError, EngineUnavailableError, InvalidParameterError,
                      LaEdgeError, RequestTimeoutError, StepFailedError)
from ..decoding.combination import MAX_BRANCHES
from ..decoding.params import GenerationParams
from ..decoding.rng import SplitMix64
from .branches import BranchSet, tokenize_branches
from .leases import Leases
from .pool import SequencePool
from .prompts import PromptPair, tokenize_text
from .scheduler import Action, Batch, Job, Phase, Scheduler
from .step import choose, copy_prefix, make_changes

__all__ = ["Engine", "RequestHandle", "StepEvent"]

_WAIT_S = 0.5  # every wait is a loop of slices this long that re-checks the engine thread
_CALL_TIMEOUT_S = 30.0  # a query (used_sequences, clear_cache, ...) waits at most this for the engine
_KV_RETRIES = 3  # a KV change that raises is retried this many steps before the engine gives up
_END = object()  # the last item of a request's output queue


@dataclass(frozen=True)
class StepEvent:
    """One generated token and its diagnostics; `finish_reason` is set on the last one.

    piece: the token's own bytes; eog: it ends generation (its text is then empty);
    top_pieces: the bytes of each `top` alternative.
    ratio_scale: the adaptive ratio's factor at this step (1.0 with a fixed ratio; 0 where the ratio guard held).
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
    """A request's state; the engine thread writes it, except `_end` (first writer wins)."""

    rid: int
    branches: BranchSet
    params: GenerationParams
    job: Job
    rng: SplitMix64
    seed: int
    history: List[int] = field(default_factory=list)
    out: "queue.SimpleQueue" = field(default_factory=queue.SimpleQueue)
    _end: Dict[str, tuple] = field(default_factory=dict)  # {"v": (reason, error)} once ended
    admitted: bool = False
    enqueued: bool = False  # the scheduler holds its job
    released: bool = False  # its job is freed and _END is queued
    raised: bool = False  # the consumer raised its error once
    deadline: Optional[float] = None  # time.monotonic() past which it ends with RequestTimeoutError
    t_submit: float = 0.0
    t_start: float = 0.0
    t_first: float = 0.0
    t_end: float = 0.0

    def claim(self, reason: str, error: Optional[BaseException] = None) -> bool:
        """End the request as `reason` unless it already ended; dict.setdefault is atomic."""
        mine = (reason, error)
        return self._end.setdefault("v", mine) is mine

    @property
    def finish_reason(self) -> Optional[str]:
        return self._end.get("v", (None, None))[0]

    @property
    def error(self) -> Optional[BaseException]:
        return self._end.get("v", (None, None))[1]


class RequestHandle:
    """A submitted request: iterate it for StepEvents; cancel() frees its sequences.

    A handle that is dropped, garbage-collected or whose iteration is closed early cancels its
    request (weakref.finalize and try/finally), so an abandoned request never holds the engine.
    """

    def __init__(self, engine: "Engine", req: _Request):
        self._engine = engine
        self._req = req
        weakref.finalize(self, engine.cancel, req)

    @property
    def branches(self) -> BranchSet:
        return self._req.branches

    @property
    def branch_tokens(self) -> Tuple[int, ...]:
        """Prompt tokens of each branch."""
        return tuple(len(p) for p in self._req.job.prompts)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the base branch (the principled prompt; the plain one under a negative prompt)."""
        return len(self._req.job.prompts[self._req.branches.base])

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
        cached = job.cached or (0,) * job.n_seqs
        return cached[self._req.branches.base], (0 if ref is None else cached[ref])

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
        try:
            while True:
                ev = self._engine.next_event(self._req)
                if ev is None:
                    return
                yield ev
        finally:
            self.cancel()  # closed or dropped early; a no-op once it ended


def _step_error(exc: BaseException) -> BaseException:
    """Typed errors (DecodeError and the rest of LaEdgeError) stay; anything else is wrapped."""
    if isinstance(exc, LaEdgeError):
        return exc
    return StepFailedError(f"step failed: {type(exc).__name__}: {exc}", cause=exc)


def check_max_branches(value) -> None:
    """Sequences one request may use: an integer in [1, MAX_BRANCHES] (the C sampler's bound)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_BRANCHES:
        raise InvalidParameterError(f"max_branches must be an integer in [1, {MAX_BRANCHES}], got {value!r}")


def _check_chunk(name: str, value: int, max_branches: int) -> None:
    """A request's final prompt tokens of every branch share one batch, never a last token alone."""
    if value < 2 * max_branches:
        raise InvalidParameterError(
            f"{name}={value} is too small for max_branches={max_branches}: a request's last prompt "
            f"tokens of every branch share one batch; use {name} >= {2 * max_branches}")


@dataclass
class _Profile:
    """Host time per decode step (one token per sequence; prompt batches are left out): inside the
    native forward pass, in the sampler, and the rest (batch filling, bookkeeping, queue hand-offs)."""

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


class _Reply:
    """The answer to a `call` command."""

    def __init__(self):
        self.done = threading.Event()
        self.value: object = None
        self.error: Optional[BaseException] = None


class Engine:
    """Schedules requests of up to `max_branches` branches over one backend context; every batch
    is one decode call, made by the engine's own thread."""

    def __init__(self, backend, max_requests: int = 1, max_queue: int = 16, prefer_native: bool = True,
                 prefill_chunk: int = 256, mix_prefill: bool = False, prompt_cache: bool = True,
                 max_branches: int = 2):
        from ..decoding.native import make_chooser

        check_max_branches(max_branches)
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
        self._inbox: "queue.SimpleQueue" = queue.SimpleQueue()  # commands; put() is safe in finalizers
        # Open requests: max_requests running and max_queue waiting; the rest get BusyError at once.
        self._slots = threading.BoundedSemaphore(max_requests + max_queue)
        self._leases = Leases()
        self._ids = itertools.count()
        self._requests: Dict[int, _Request] = {}  # open ones; submit() adds, the engine thread removes
        self._closed = False
        self._failure: Optional[BaseException] = None
        self._in_decode = False
        self._kv_failures = 0
        self._profile = _Profile()
        self._last_end: Optional[float] = None
        self._snap: Dict[str, Dict] = {}
        self.backend_freed = False  # set by Aligner.close() once the backend's handles are freed
        self.steps = 0  # decode calls so far
        for s in range(backend.n_seq_max):  # the engine owns the KV cache: start from an empty one
            backend.seq_remove(s)
        self._publish()
        self._thread = threading.Thread(target=self._run, name="la-edge-engine", daemon=True)
        self._thread.start()

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

    # ---- state (read from any thread) ---------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True until stop() or a failure of the engine thread."""
        return not self._closed and self._failure is None

    @property
    def failure(self) -> Optional[BaseException]:
        """What broke the engine thread, if anything did."""
        return self._failure

    @property
    def decode_in_flight(self) -> bool:
        """A decode runs now; the context must not be freed meanwhile."""
        return self._in_decode and self._failure is None

    @property
    def prompt_cache(self) -> bool:
        """Finished requests park their sequences for later prompts that start the same way."""
        return self.pool.prompt_cache

    def _open(self) -> Tuple[_Request, ...]:
        return tuple(self._requests.values())

    @property
    def n_active(self) -> int:
        return sum(1 for r in self._open() if r.admitted and r.finish_reason is None)

    @property
    def n_queued(self) -> int:
        return sum(1 for r in self._open() if not r.admitted and r.finish_reason is None)

    def cache_stats(self) -> Dict[str, object]:
        """The prompt cache: on or off, parked and running sequences, parked cells, the bound."""
        return dict(self._snap["cache"])

    def kv_stats(self) -> Dict[str, int]:
        """KV cells: all of them, reserved by running requests (prompt + max_tokens per branch), held by
        the prompt cache, and free; and the sequences free."""
        return dict(self._snap["kv"])

    def _publish(self) -> None:
        """Snapshot the pool for readers in other threads (engine thread only)."""
        pool, total = self.pool, self.backend.n_ctx_total
        parked = pool.parked_cells
        self._snap = {
            "cache": {"enabled": pool.prompt_cache, "parked_sequences": len(pool.parked),
                      "running_sequences": sum(len(j.seqs) for j in self.scheduler.active),
                      "parked_cells": parked, "max_sequences": pool.n_seq, "kv_cells": total},
            "kv": {"cells": total, "cells_in_use": pool.reserved + parked, "cells_running": pool.reserved,
                   "cells_parked": parked, "cells_free": max(total - pool.reserved - parked, 0),
                   "sequences": pool.n_seq, "sequences_free": len(pool.free)}}

    # ---- queries, answered by the engine thread between steps --------------------------------
    def profile(self, reset: bool = False) -> Dict[str, float]:
        """Host time per decode step (see _Profile); reset=True starts a new count after reading."""
        def read():
            out = self._profile.as_dict()
            if reset:
                self._profile = _Profile()
            return out
        return self._call(read)

    def used_sequences(self) -> List[int]:
        """Sequences that hold KV cells now (should be empty when idle)."""
        return self._call(self._used)

    def _used(self) -> List[int]:
        self._apply_changes()
        return [s for s in range(self.backend.n_seq_max) if self.backend.seq_pos_max(s) >= 0]

    def parked_sequences(self) -> List[int]:
        """Sequences the prompt cache holds for later requests (least recently used first)."""
        return self._call(lambda: list(self.pool.parked))

    def leaked_sequences(self) -> List[int]:
        """Sequences holding KV cells that no request runs on and the cache does not hold (should be [])."""
        def leaked():
            held = {s.seq_id for j in self.scheduler.active for s in j.seqs} | set(self.pool.parked)
            return [s for s in self._used() if s not in held]
        return self._call(leaked)

    def clear_cache(self) -> int:
        """Drop every parked sequence now; returns how many."""
        def clear():
            n = len(self.pool.drop_parked())
            self._apply_changes()
            self._publish()
            return n
        return self._call(clear)

    def _call(self, fn: Callable[[], object], timeout: float = _CALL_TIMEOUT_S):
        """Run fn on the engine thread between steps (directly once that thread has ended)."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            if self.backend_freed:
                raise EngineUnavailableError("engine stopped and its model freed")
            return fn()
        reply = _Reply()
        self._inbox.put(("call", fn, reply))
        deadline = time.monotonic() + timeout
        while not reply.done.wait(0.05):
            if not self._thread.is_alive():
                return fn() if not reply.done.is_set() else self._answer(reply)
            if time.monotonic() > deadline:
                raise EngineUnavailableError(f"the engine did not answer within {timeout:g} s (a decode is running)")
        return self._answer(reply)

    @staticmethod
    def _answer(reply: _Reply):
        if reply.error is not None:
            raise reply.error
        return reply.value

    # ---- the backend's vocabulary, leased ------------------------------------------------------
    def lease(self):
        """Hold the backend for a vocabulary call: stop() frees it only after every lease ends."""
        return self._leases.hold(self.backend)

    def tokenize_prompt(self, text: str) -> List[int]:
        """Tokens of a rendered prompt, with BOS added only where the model wants it and the text lacks it."""
        with self.lease() as b:
            return tokenize_text(b, text)

    def token_bytes(self, token: int) -> bytes:
        with self.lease() as b:
            return b.token_bytes(token)

    # ---- submission (any thread) -------------------------------------------------------------
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
        self._check_available()
        with self.lease() as b:
            prompts = tokenize_branches(b, branches)
        for k, p in enumerate(prompts):
            if not p:  # nothing to decode: such a job would never produce a logits row
                raise InvalidParameterError(
                    f"the {branches.branches[k].role} prompt (branch {k}) has no tokens; give a non-empty prompt")
        # A sliding-window cache's seq_copy is not exact: such backends decode every prompt in full.
        job = Job.for_branches(prompts, params.max_tokens, share_prefix=self.backend.supports_seq_copy)
        self._check_fits(job, prompts, params)
        seed = params.seed if params.seed is not None else SplitMix64().next_u64()
        timeout = params.timeout
        req = _Request(rid=next(self._ids), branches=branches, params=params, job=job, rng=SplitMix64(seed),
                       seed=seed, t_submit=time.perf_counter(),
                       deadline=None if timeout is None else time.monotonic() + timeout)
        job.owner = req
        self._check_available()
        if not self._slots.acquire(blocking=False):
            raise BusyError(f"engine busy: {self.n_active} running, {self.n_queued} queued")
        self._requests[req.rid] = req
        self._inbox.put(("add", req))
        return RequestHandle(self, req)

    def _check_fits(self, job: Job, prompts: List[List[int]], params: GenerationParams) -> None:
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

    def _check_available(self) -> None:
        if self._failure is not None:
            raise EngineUnavailableError(f"engine failed: {self._failure!r}", cause=self._failure)
        if self._closed:
            raise EngineUnavailableError("engine stopped")

    def cancel(self, req: _Request, reason: str = "cancelled") -> None:
        """End a request now, from any thread (finalizers included); its sequences are freed at the
        engine's next step. reason="stop" (a stop string was found) parks its prompt sequences."""
        if req.claim(reason):
            self._inbox.put(("end", req))

    def cancel_all(self) -> int:
        """Cancel every open request; returns how many were still running."""
        n = 0
        for req in self._open():
            if req.claim("cancelled"):
                self._inbox.put(("end", req))
                n += 1
        return n

    # ---- reading a request's events (the consumer's thread) -----------------------------------
    def next_event(self, req: _Request) -> Optional[StepEvent]:
        """The request's next event (None at its end); raises its error once. Waits in bounded slices."""
        while True:
            try:
                item = req.out.get(timeout=_WAIT_S)
            except queue.Empty:
                if not self._thread.is_alive() and not req.released:
                    self._orphaned(req)  # the engine thread ended without ending this request
                continue
            if item is not _END:
                return item
            req.out.put(_END)  # any later read ends too
            if req.finish_reason == "error" and req.error is not None and not req.raised:
                req.raised = True
                raise req.error
            return None

    def _orphaned(self, req: _Request) -> None:
        err = self._failure
        req.claim("error", EngineUnavailableError(
            f"engine failed: {err!r}" if err is not None else "engine stopped", cause=err))
        req.released = True
        req.out.put(_END)

    # ---- the engine thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Kept for callers of earlier versions: the engine thread runs from construction."""
        self._check_available()

    def _run(self) -> None:
        try:
            while True:
                if self._drain(block=False):
                    break
                self._expire()
                self._admit()
                self._apply_changes()
                if self.pool.pending:  # a KV change failed: it is retried before anything decodes
                    continue
                batch = self.scheduler.plan() or self.scheduler.plan()  # the round's next, or a new round
                self._publish()
                if batch is not None:
                    self._execute(batch)
                    continue
                self._last_end = None  # idle: the next step starts a new busy stretch
                if self._drain(block=True):
                    break
            self._shutdown()
        except BaseException as exc:  # whatever ends this thread is recorded
            self._fail(exc)

    def _drain(self, block: bool) -> bool:
        """Do the queued commands (waiting up to _WAIT_S for a first one if `block`); True on stop."""
        while True:
            try:
                cmd = self._inbox.get(timeout=_WAIT_S) if block else self._inbox.get_nowait()
            except queue.Empty:
                return False
            block = False
            kind = cmd[0]
            if kind == "stop":
                return True
            if kind == "add":
                self._add(cmd[1])
            elif kind == "end":
                self._release(cmd[1])
            elif kind == "call":
                reply = cmd[2]
                try:
                    reply.value = cmd[1]()
                except Exception as exc:  # reported to the caller
                    reply.error = exc
                reply.done.set()

    def _add(self, req: _Request) -> None:
        if req.finish_reason is not None:  # cancelled before it got here
            self._release(req)
            return
        self.scheduler.enqueue(req.job)
        req.enqueued = True

    def _admit(self) -> None:
        for job in self.scheduler.admit():
            req = job.owner
            req.admitted, req.t_start = True, time.perf_counter()

    def _expire(self) -> None:
        """End the requests past their deadline."""
        now = time.monotonic()
        for req in self._open():
            if req.deadline is not None and now >= req.deadline and not req.released:
                self._finish(req, "error", RequestTimeoutError(
                    f"request timed out after {req.params.timeout:g} s ({len(req.history)} tokens generated); "
                    f"raise the timeout or lower max_tokens"))

    def _finish(self, req: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        req.claim(reason, error)
        self._release(req)

    def _release(self, req: _Request, free_job: bool = True) -> None:
        """Free an ended request's job (park it if it ended normally) and close its output; free_job=False
        once the engine has ended (stopped or failed: the scheduler is not touched)."""
        if req.released:
            return
        req.released = True
        try:
            req.t_end = time.perf_counter()
            self._requests.pop(req.rid, None)
            self._slots.release()
            if not free_job:
                return
            if req.enqueued:
                # Only a request that ended normally parks its sequences: nothing half-written is kept.
                self.scheduler.finish(req.job, park=req.finish_reason in ("stop", "length"))
            req.job.phase = Phase.DONE
            self._publish()
        finally:
            req.out.put(_END)  # the consumer ends even if the engine breaks here

    def _apply_changes(self) -> None:
        """Make the pool's pending KV changes; a raise keeps the rest queued, retried next step."""
        try:
            make_changes(self.backend, self.pool, self.scheduler)
        except Exception:
            self._kv_failures += 1
            if self._kv_failures >= _KV_RETRIES:
                raise
            time.sleep(0.01 * self._kv_failures)
            return  # nothing is decoded before every change is made
        self._kv_failures = 0

    # ---- one batch -----------------------------------------------------------------------------
    def _execute(self, batch: Batch) -> None:
        """Decode, sample each request's choice, and apply the results."""
        error: Optional[BaseException] = None
        t0 = time.perf_counter()
        self._in_decode = True
        try:
            self.backend.decode(batch.entries)
        except Exception as exc:  # fails this batch's requests only
            error = exc
        finally:
            self._in_decode = False
        t1 = time.perf_counter()
        choices: Dict[int, object] = {}
        if error is None:
            for i, p in enumerate(batch.planned):
                if p.action is Action.SAMPLE and p.job.owner.finish_reason is None:
                    choices[i] = self._choose(p.job.owner, p.rows)
        t2 = time.perf_counter()
        self.steps += 1
        for i, p in enumerate(batch.planned):
            req = p.job.owner
            if req.finish_reason is not None:
                self._release(req)  # cancelled during the decode
            elif error is not None:
                self._finish(req, "error", _step_error(error))
            elif p.action is Action.COPY:
                self._copy(req)
            elif p.action is Action.SAMPLE:
                out = choices[i]
                if isinstance(out, Exception):
                    self._finish(req, "error", _step_error(out))
                else:
                    try:
                        self._emit(req, out)
                    except Exception as exc:  # ends this request only
                        self._finish(req, "error", _step_error(exc))
        self._note_profile(t0, t1, t2, len(choices), all(e.logits for e in batch.entries))

    def _note_profile(self, t0: float, t1: float, t2: float, n_tokens: int, decode_only: bool) -> None:
        """Add a step to the profile; prompt batches (some tokens without logits) are left out."""
        end = time.perf_counter()
        if not decode_only:
            self._last_end = end
            return
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
            return choose(self.backend, self.chooser, rows, req.branches.combination, req.params, req.rng,
                          req.history)
        except Exception as exc:  # reported per request by _execute
            return exc

    def _copy(self, req: _Request) -> None:
        try:
            copy_prefix(self.backend, req.job)
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
        ev = StepEvent(tok, choice.logprob, choice.top, choice.nucleus_size, reason,
                       self.backend.token_bytes(tok), eog, top, choice.ratio_scale)
        if reason is None:
            req.out.put(ev)
            self.scheduler.sampled(req.job, tok)
            return
        if req.claim(reason):
            req.out.put(ev)
        self._release(req)

    # ---- the end -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """stop(): end every open request (and any still in the inbox) and empty the KV cache."""
        for req in self._open():
            self._finish(req, "cancelled")
        self._drain_after_end()
        self.pool.drop_parked()
        self._apply_changes()
        self._publish()

    def _drain_after_end(self, error: Optional[BaseException] = None) -> None:
        """Answer what is still queued once the engine has ended (stopped or failed)."""
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] in ("add", "end"):
                cmd[1].claim("error", error) if error is not None else cmd[1].claim("cancelled")
                self._release(cmd[1], free_job=False)
            elif cmd[0] == "call":
                cmd[2].error = EngineUnavailableError("engine stopped", cause=error)
                cmd[2].done.set()

    def _fail(self, exc: BaseException) -> None:
        """The engine thread broke: fail every open request at once and clear the KV cache."""
        self._failure = exc
        err = EngineUnavailableError(f"engine failed: {exc!r}", cause=exc)
        for req in self._open():
            req.claim("error", err)
            self._release(req, free_job=False)
        self._drain_after_end(err)
        for s in range(self.backend.n_seq_max):
            try:
                self.backend.seq_remove(s)
            except Exception:  # best effort: the engine is already marked failed
                pass

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the engine for good; open requests end as "cancelled" and later submits raise.

        Waits (at most `timeout` seconds) for the engine thread, its decode in flight and the
        vocabulary calls running. Returns True when none is left (later leases are refused), so the
        backend may be freed.
        """
        deadline = time.monotonic() + timeout
        self._closed = True
        for req in self._open():
            req.claim("cancelled")
        self._inbox.put(("stop",))
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False
        return self._leases.retire(max(0.0, deadline - time.monotonic()))
