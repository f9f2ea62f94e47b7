"""The engine: a small runner over the Scheduler (scheduler.py) and one backend context.

The scheduler plans each batch under the lock; the runner decodes it, reads the logits rows and
samples with the lock released ("in flight"), then applies the results under the lock. Cancels
during a decode free their sequences after it. A failure while decoding or sampling ends only the
requests of that batch; if the runner itself breaks, every open and later request gets
EngineUnavailableError instead of waiting.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

from ..errors import (BusyError, ContextOverflowError, EngineUnavailableError, LaEdgeError,
                      StepFailedError)
from ..decoding.params import GenerationParams
from ..decoding.rng import SplitMix64
from .prompts import PromptPair, tokenize_pair, tokenize_text
from .scheduler import Action, Batch, Job, KvOp, Phase, Scheduler, common_prefix

__all__ = ["Engine", "RequestHandle", "StepEvent", "common_prefix"]

_WAIT_S = 0.5  # every wait on the condition is bounded by this and then re-checks its predicate
_CANCEL_WAIT_S = 2.0  # a cancel() that cannot take the lock this fast is queued instead
# The prompt cache reuses whole 16-token blocks: llama.cpp's k-quant CPU kernels round a token by
# its place in 16-row tiles of a decode call, so only such splits match a cold prefill (README).
REUSE_ALIGN = 16


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
    """One generated token and its diagnostics; `finish_reason` is set on the last one."""

    token: int
    logprob: Optional[float]
    top: Tuple[Tuple[int, float], ...]
    nucleus_size: int
    finish_reason: Optional[str] = None


@dataclass(eq=False)
class _Request:
    rid: int
    pair: PromptPair
    params: GenerationParams
    job: Job
    rng: SplitMix64
    seed: int
    history: List[int] = field(default_factory=list)
    events: Deque[StepEvent] = field(default_factory=collections.deque)
    finish_reason: Optional[str] = None  # set once: the request is over
    error: Optional[BaseException] = None
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
    def prompt_tokens(self) -> int:
        return len(self._req.job.tokens_p)

    @property
    def plain_prompt_tokens(self) -> int:
        t0 = self._req.job.tokens_0
        return len(t0) if t0 is not None else 0

    @property
    def shared_prefix_tokens(self) -> int:
        return self._req.job.shared

    @property
    def cached_tokens(self) -> Tuple[int, int]:
        """Prompt tokens taken from the prompt cache: (principled, plain)."""
        return self._req.job.cached

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
        self._engine.cancel(self._req)

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


class Engine:
    """Schedules requests over one backend context; every batch is one decode call."""

    def __init__(self, backend, max_requests: int = 1, max_queue: int = 16, prefer_native: bool = True,
                 prefill_chunk: int = 256, mix_prefill: bool = False, prompt_cache: bool = True):
        from ..decoding.native import make_chooser

        if max_requests < 1 or 2 * max_requests > backend.n_seq_max:
            raise LaEdgeError(f"max_requests={max_requests} needs n_seq_max >= {2 * max_requests}")
        self.backend = backend
        self.max_queue = max_queue
        self.chooser = make_chooser(backend.n_vocab, prefer_native=prefer_native)
        self.scheduler = Scheduler(backend.n_seq_max, max_requests, backend.n_batch, backend.n_ctx_total,
                                   backend.kv_unified, prefill_chunk, mix_prefill, prompt_cache=prompt_cache,
                                   reuse_align=REUSE_ALIGN)
        self._lock = _OwnedLock()  # guards the scheduler and the requests; never held in a decode
        self._cond = threading.Condition(self._lock)
        self._cancels: Deque[_Request] = collections.deque()  # cancels queued while the lock was busy
        self._ids = itertools.count()
        self._open: Dict[int, _Request] = {}
        self._background: Optional[threading.Thread] = None
        self._closed = False
        self._failure: Optional[BaseException] = None
        self.steps = 0  # decode calls so far
        for s in range(backend.n_seq_max):  # the engine owns the KV cache: start from an empty one
            backend.seq_remove(s)

    # ---- configuration (the scheduler holds it) -----------------------------------------
    @property
    def max_requests(self) -> int:
        return self.scheduler.max_requests

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per batch while others decode."""
        return self.scheduler.prefill_chunk

    @prefill_chunk.setter
    def prefill_chunk(self, value: int) -> None:
        self.scheduler.prefill_chunk = value

    @property
    def mix_prefill(self) -> bool:
        """One decode call per step for prompts and decodes together, at the cost of exactness."""
        return self.scheduler.mix_prefill

    @mix_prefill.setter
    def mix_prefill(self, value: bool) -> None:
        self.scheduler.mix_prefill = value

    # ---- state ---------------------------------------------------------------------------
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
        return self.scheduler.prompt_cache

    @property
    def n_active(self) -> int:
        return len(self.scheduler.active)

    @property
    def n_queued(self) -> int:
        return len(self.scheduler.queue)

    def used_sequences(self) -> List[int]:
        """Sequences that hold KV cells now (should be empty when idle); waits out a decode in flight."""
        with self._cond:
            return self._used()

    def _used(self) -> List[int]:
        """used_sequences() with the lock held."""
        self._wait_until(lambda: not self.decode_in_flight, 30.0)
        return [s for s in range(self.backend.n_seq_max) if self.backend.seq_pos_max(s) >= 0]

    def parked_sequences(self) -> List[int]:
        """Sequences the prompt cache holds for later requests (least recently used first)."""
        with self._cond:
            return list(self.scheduler.parked)

    def leaked_sequences(self) -> List[int]:
        """Sequences holding KV cells that no request runs on and the cache does not hold (should be [])."""
        with self._cond:
            used = self._used()
            held = {s.seq_id for j in self.scheduler.active for s in j.seqs} | set(self.scheduler.parked)
            return [s for s in used if s not in held]

    def cache_stats(self) -> Dict[str, object]:
        """The prompt cache: on or off, parked and running sequences, parked cells, the bound."""
        with self._cond:
            sch = self.scheduler
            return {"enabled": sch.prompt_cache, "parked_sequences": len(sch.parked),
                    "running_sequences": sum(len(j.seqs) for j in sch.active),
                    "parked_cells": sch.parked_cells, "max_sequences": sch.n_seq_max,
                    "kv_cells": self.backend.n_ctx_total}

    def clear_cache(self) -> int:
        """Drop every parked sequence now (waits out a decode in flight); returns how many."""
        with self._cond:
            self._wait_until(lambda: not self.scheduler.in_flight, 30.0)
            if self.scheduler.in_flight:
                return 0
            ids = self.scheduler.drop_parked()
            self._clear(ids)
            return len(ids)

    # ---- submission ------------------------------------------------------------------------
    def tokenize_prompt(self, text: str) -> List[int]:
        """Tokens of a rendered prompt, with BOS added only where the model wants it and the text lacks it."""
        return tokenize_text(self.backend, text)

    def submit(self, pair: PromptPair, params: GenerationParams) -> RequestHandle:
        """Validate sizes and enqueue; raises ContextOverflowError, BusyError or EngineUnavailableError."""
        with self._cond:
            self._check_available()
        tokens_p, tokens_0 = tokenize_pair(self.backend, pair)
        if tokens_0 is not None and params.ratio == 0.0:
            tokens_0 = None  # r = 0: the principled branch alone
        # A sliding-window cache's seq_copy is not exact: such backends decode both prompts in full.
        job = Job.for_prompts(tokens_p, tokens_0, params.max_tokens, share_prefix=self.backend.supports_seq_copy)
        longest = max(len(tokens_p), len(tokens_0 or ()))
        n_ctx = self.backend.n_ctx
        if longest + params.max_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt ({longest} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"window n_ctx={n_ctx}; shorten the prompt, lower max_tokens or raise n_ctx")
        total = self.backend.n_ctx_total
        if self.backend.kv_unified and job.cells > total:
            raise ContextOverflowError(
                f"both sequences need {job.cells} KV cells ({len(tokens_p)}+{len(tokens_0 or ())}-{job.shared} "
                f"shared prompt tokens + 2x{params.max_tokens} generated) but the unified cache has {total}; "
                f"lower max_tokens")
        seed = params.seed if params.seed is not None else SplitMix64().next_u64()
        req = _Request(rid=next(self._ids), pair=pair, params=params, job=job, rng=SplitMix64(seed), seed=seed,
                       t_submit=time.perf_counter())
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
        """Admit queued jobs (lock held; a decode may be in flight)."""
        for job in self.scheduler.admit():
            job.owner.t_start = time.perf_counter()

    def _prepare(self) -> None:
        """Make admitted jobs' KV changes: evict and trim parked sequences (lock held, nothing in flight)."""
        for job in self.scheduler.active:
            for p in job.prep:
                if p.op is KvOp.CLEAR:
                    self.backend.seq_remove(p.seq_id)
                elif (self.backend.seq_pos_max(p.seq_id) + 1 < p.pos  # cleared behind the engine's back
                      or self._window_lost(p.seq_id, p.pos)
                      or self.backend.seq_remove(p.seq_id, p.pos, -1) is False):  # a cache that cannot cut
                    self.backend.seq_remove(p.seq_id)
                    self.scheduler.cold(job, p.seq_id)
            job.prep = []

    def _window_lost(self, seq_id: int, pos: int) -> bool:
        """A sliding-window cache no longer holds the window before `pos` (llama.cpp's own server test)."""
        n_swa = getattr(self.backend, "n_swa", 0)
        return bool(n_swa) and self.backend.seq_pos_min(seq_id) > max(0, pos - n_swa)

    # ---- lifecycle -------------------------------------------------------------------------
    def cancel(self, req: _Request) -> None:
        """End a request now; sequences in a decode in flight are freed right after it.

        From inside the engine's locked code (a finalizer) or when the lock stays busy, the cancel
        is queued and done at the engine's next locked section instead: it never deadlocks.
        """
        if self._lock.owner == threading.get_ident() or not self._lock.acquire(timeout=_CANCEL_WAIT_S):
            self._cancels.append(req)
            return
        try:
            self._drain_cancels()
            self._finish(req, "cancelled")
        finally:
            self._lock.release()

    def _drain_cancels(self) -> None:
        """Do the queued cancels (lock held)."""
        while self._cancels:
            self._finish(self._cancels.popleft(), "cancelled")

    def _finish(self, req: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        if req.finish_reason is not None:
            return
        req.finish_reason = reason
        req.error = error
        req.t_end = time.perf_counter()
        self._open.pop(req.rid, None)
        # Only a request that ended normally parks its sequences: nothing half-written is kept.
        self._clear(self.scheduler.finish(req.job, park=reason in ("stop", "length")))
        self._cond.notify_all()

    def _clear(self, seq_ids: List[int]) -> None:
        for s in seq_ids:
            self.backend.seq_remove(s)

    def _wait_until(self, ready, timeout: float) -> bool:
        """Wait on the condition (lock held) in bounded slices until ready() or the timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, _WAIT_S))
        return True

    # ---- one step --------------------------------------------------------------------------
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
                if not ran:
                    self._admit()
                self._prepare()
                batch = self.scheduler.plan()
                if batch is None:
                    return ran
            self._execute(batch)
            ran = True

    def _execute(self, batch: Batch) -> None:
        """Decode and sample without the lock, then apply the results and end the batch under it."""
        error: Optional[BaseException] = None
        choices: Dict[int, object] = {}
        try:
            self.backend.decode(batch.entries)
        except BaseException as exc:  # an interrupt fails this batch, then propagates
            error = exc
        if error is None:
            for i, p in enumerate(batch.planned):
                if p.action is Action.SAMPLE and p.job.phase is not Phase.DONE:
                    choices[i] = self._choose(p.job.owner, p.rows)
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
                self._clear(self.scheduler.end_batch())
                self._cond.notify_all()
        if interrupt is not None:
            raise interrupt

    def _choose(self, req: _Request, rows: Tuple[int, ...]):
        """The sampled choice for one request, or the exception that stopped it."""
        try:
            zp = self.backend.logits_row(rows[0])
            z0 = self.backend.logits_row(rows[1]) if len(rows) > 1 else None
            return self.chooser.choose(zp, z0, req.params, req.rng, req.history)
        except BaseException as exc:  # reported per request by _execute
            return exc

    def _copy(self, req: _Request) -> None:
        a, b = req.job.seqs
        try:
            # A holds exactly the shared prefix now; a whole-sequence copy works in split caches too.
            self.backend.seq_copy(a.seq_id, b.seq_id, -1, -1)
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
        if not req.params.ignore_eos and self.backend.is_eog(tok):
            reason = "stop"
        elif len(req.history) >= req.params.max_tokens:
            reason = "length"
        req.events.append(StepEvent(tok, choice.logprob, choice.top, choice.nucleus_size, reason))
        if reason:
            self._finish(req, reason)
        else:
            self.scheduler.sampled(req.job, tok)

    # ---- failure ---------------------------------------------------------------------------
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
        self.scheduler.drop_parked()
        for s in range(self.backend.n_seq_max):
            try:
                self.backend.seq_remove(s)
            except Exception:  # best effort: the engine is already marked failed
                pass
        self._cond.notify_all()

    # ---- consumption -----------------------------------------------------------------------
    def next_event(self, req: _Request) -> Optional[StepEvent]:
        """The request's next event (None at its end); drives step() itself unless a background loop runs."""
        while True:
            with self._cond:
                while True:
                    self._drain_cancels()
                    if req.events:
                        return req.events.popleft()
                    if req.finish_reason is not None:
                        if req.error is not None and req.finish_reason == "error":
                            err, req.error = req.error, None
                            raise err
                        return None
                    t = self._background
                    if t is not None and not t.is_alive() and self.alive:
                        self._record_failure(RuntimeError("the engine thread exited"))
                        continue
                    if t is None and not self.scheduler.in_flight and self.alive:
                        break  # no runner: drive a step from this thread
                    self._cond.wait(_WAIT_S)
            try:
                ran = self.step()
            except EngineUnavailableError:
                continue  # the request now holds the error; raise it above, once
            if not ran:
                with self._cond:
                    self._cond.wait(0.01)  # nothing could run; do not spin

    def start(self) -> None:
        """Run steps in a background thread (for servers and concurrent callers)."""
        with self._cond:
            self._check_available()
            if self._background is not None:
                return
            self._background = threading.Thread(target=self._loop, name="la-edge-engine", daemon=True)
            self._background.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the engine for good; open requests end as "cancelled" and later submits raise.

        Waits (at most `timeout` seconds) for the background thread and the decode in flight. Returns
        True when no decode is in flight any more, so the context may be freed.
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
            idle = not self.decode_in_flight and not (t is not None and t.is_alive())
            if idle:
                self._clear(self.scheduler.drop_parked())  # a stopped engine leaves the KV cache empty
            return idle

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self.alive:
                        return
                    self._drain_cancels()
                    if not self.scheduler.has_work:
                        self._cond.wait(_WAIT_S)
                        continue
                if not self.step():
                    with self._cond:
                        self._cond.wait(0.001)  # nothing could run this round; do not spin
        except EngineUnavailableError:
            return  # step() recorded the failure
        except BaseException as exc:  # whatever ends this thread is recorded
            self._die(exc)
