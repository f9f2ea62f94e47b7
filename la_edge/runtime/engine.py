"""The engine: owns requests and their two KV-cache sequences; one decode per step for all of them.

A request with a principle and r != 0 runs two sequences, A (principled) and B (plain), whose
shared prompt prefix is decoded once in A and copied to B. All final tokens of a step go in one
batch; their logits rows are combined and sampled in place.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ..backends.base import BatchEntry
from ..errors import BusyError, ContextOverflowError, DecodeError, LaEdgeError
from ..decoding.params import GenerationParams
from .prompts import PromptPair, tokenize_pair, tokenize_text
from ..decoding.rng import SplitMix64


@dataclass(frozen=True)
class StepEvent:
    """One generated token and its diagnostics; `finish_reason` is set on the last one."""

    token: int
    logprob: Optional[float]
    top: Tuple[Tuple[int, float], ...]
    nucleus_size: int
    finish_reason: Optional[str] = None


@dataclass
class _Seq:
    seq_id: int
    pending: List[int]
    n_past: int = 0
    final_index: int = -1


@dataclass
class _Request:
    rid: int
    pair: PromptPair
    params: GenerationParams
    tokens_p: List[int]
    tokens_0: Optional[List[int]]
    shared: int
    cells: int
    rng: SplitMix64
    seed: int
    seqs: List[_Seq] = field(default_factory=list)
    phase: str = "queued"  # queued -> shared -> rest -> done
    history: List[int] = field(default_factory=list)
    events: Deque[object] = field(default_factory=collections.deque)
    finish_reason: Optional[str] = None
    error: Optional[BaseException] = None
    t_submit: float = 0.0
    t_start: float = 0.0
    t_first: float = 0.0
    t_end: float = 0.0

    @property
    def aligned(self) -> bool:
        return self.tokens_0 is not None


def _is_decoding(req: _Request) -> bool:
    """Past its prompt: each sequence waits for at most its one next token."""
    return req.phase == "rest" and all(len(s.pending) <= 1 for s in req.seqs)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix, leaving at least one token of each for the logits."""
    n = min(len(a), len(b)) - 1
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return max(i, 0)


class RequestHandle:
    """A submitted request: iterate it for StepEvents; cancel() frees its sequences at once."""

    def __init__(self, engine: "Engine", req: _Request):
        self._engine = engine
        self._req = req

    @property
    def prompt_tokens(self) -> int:
        return len(self._req.tokens_p)

    @property
    def plain_prompt_tokens(self) -> int:
        return len(self._req.tokens_0) if self._req.tokens_0 is not None else 0

    @property
    def shared_prefix_tokens(self) -> int:
        return self._req.shared

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


class Engine:
    """Schedules requests over one backend context; every step is one decode call."""

    def __init__(self, backend, max_requests: int = 1, max_queue: int = 16, prefer_native: bool = True,
                 prefill_chunk: int = 256, mix_prefill: bool = False):
        from ..decoding.native import make_chooser

        if max_requests < 1 or 2 * max_requests > backend.n_seq_max:
            raise LaEdgeError(f"max_requests={max_requests} needs n_seq_max >= {2 * max_requests}")
        self.backend = backend
        self.max_requests = max_requests
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk  # prompt tokens per step while others decode
        self.mix_prefill = mix_prefill  # one llama_decode per step, at the cost of exactness
        self.chooser = make_chooser(backend.n_vocab, prefer_native=prefer_native)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._free_seqs = list(range(backend.n_seq_max - 1, -1, -1))
        self._queue: Deque[_Request] = collections.deque()
        self._active: List[_Request] = []
        self._reserved = 0
        self._decoding = False  # a decode runs with the lock released
        self._deferred: List[int] = []
        self._background: Optional[threading.Thread] = None
        self._stopping = False
        self.steps = 0

    # ---- submission -------------------------------------------------------------------
    def tokenize_prompt(self, text: str) -> List[int]:
        """Tokens of a rendered prompt, with BOS added only where the model wants it and the text lacks it."""
        return tokenize_text(self.backend, text)

    def submit(self, pair: PromptPair, params: GenerationParams) -> RequestHandle:
        """Validate sizes and enqueue; raises ContextOverflowError or BusyError before any decoding."""
        tokens_p, tokens_0 = tokenize_pair(self.backend, pair)
        aligned = tokens_0 is not None and params.ratio != 0.0
        tokens_0 = tokens_0 if aligned else None
        shared = common_prefix(tokens_p, tokens_0) if aligned else 0
        longest = max(len(tokens_p), len(tokens_0 or ()))
        n_ctx = self.backend.n_ctx
        if longest + params.max_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt ({longest} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"window n_ctx={n_ctx}; shorten the prompt, lower max_tokens or raise n_ctx")
        cells = len(tokens_p) + params.max_tokens
        if aligned:
            cells += len(tokens_0) - shared + params.max_tokens
        total = self.backend.n_ctx_total
        if self.backend.kv_unified and cells > total:
            raise ContextOverflowError(
                f"both sequences need {cells} KV cells ({len(tokens_p)}+{len(tokens_0)}-{shared} shared prompt "
                f"tokens + 2x{params.max_tokens} generated) but the unified cache has {total}; lower max_tokens")
        seed = params.seed if params.seed is not None else SplitMix64().next_u64()
        req = _Request(
            rid=next(self._ids), pair=pair, params=params, tokens_p=tokens_p, tokens_0=tokens_0,
            shared=shared, cells=cells, rng=SplitMix64(seed), seed=seed, t_submit=time.perf_counter())
        with self._cond:
            self._admit()
            if len(self._queue) >= self.max_queue:
                raise BusyError(f"engine busy: {len(self._active)} running, {len(self._queue)} queued")
            self._queue.append(req)
            self._admit()  # takes a free slot now, even while a decode runs
            self._cond.notify_all()
        return RequestHandle(self, req)

    # ---- lifecycle --------------------------------------------------------------------
    def cancel(self, req: _Request) -> None:
        with self._cond:
            if req.phase == "done":
                return
            if req in self._queue:
                self._queue.remove(req)
            self._finish(req, "cancelled")

    def _finish(self, req: _Request, reason: str, error: Optional[BaseException] = None) -> None:
        req.finish_reason = reason
        req.error = error
        req.phase = "done"
        req.t_end = time.perf_counter()
        if req in self._active:
            self._active.remove(req)
            self._reserved -= req.cells
        for s in req.seqs:
            if self._decoding:  # the context is busy in another thread: free after that decode
                self._deferred.append(s.seq_id)
            else:
                self._release_seq(s.seq_id)
        req.seqs = []
        self._cond.notify_all()

    def _release_seq(self, seq_id: int) -> None:
        self.backend.seq_remove(seq_id)
        self._free_seqs.append(seq_id)

    def _admit(self) -> None:
        while self._queue and len(self._active) < self.max_requests:
            req = self._queue[0]
            unified = self.backend.kv_unified
            if unified and self._reserved + req.cells > self.backend.n_ctx_total and self._active:
                return  # wait for KV cells to free up
            self._queue.popleft()
            self._reserved += req.cells
            a = _Seq(self._free_seqs.pop(), list(req.tokens_p))
            req.seqs = [a]
            if req.aligned:
                b = _Seq(self._free_seqs.pop(), list(req.tokens_0[req.shared:]))
                req.seqs.append(b)
            req.phase = "shared" if req.shared else "rest"
            req.t_start = time.perf_counter()
            self._active.append(req)

    @property
    def n_active(self) -> int:
        return len(self._active)

    @property
    def n_queued(self) -> int:
        return len(self._queue)

    def used_sequences(self) -> List[int]:
        """Sequences that hold KV cells now (should be empty when idle)."""
        return [s for s in range(self.backend.n_seq_max) if self.backend.seq_pos_max(s) >= 0]

    # ---- one step ----------------------------------------------------------------------
    def _plan(self, req: _Request, entries: List[BatchEntry], budget: int) -> Optional[str]:
        """Append this request's tokens to the batch; return the post-decode action."""
        seqs = req.seqs
        if req.phase == "shared":
            a = seqs[0]
            n = min(budget, req.shared - a.n_past)
            for k in range(n):
                entries.append(BatchEntry(a.pending[k], a.n_past + k, (a.seq_id,)))
            del a.pending[:n]
            a.n_past += n
            return "copy" if a.n_past == req.shared else None
        for s in seqs:
            n = max(0, min(budget, len(s.pending) - 1))
            for k in range(n):
                entries.append(BatchEntry(s.pending[k], s.n_past + k, (s.seq_id,)))
            del s.pending[:n]
            s.n_past += n
            budget -= n
        if budget >= len(seqs) and all(len(s.pending) == 1 for s in seqs):
            for s in seqs:
                s.final_index = len(entries)
                entries.append(BatchEntry(s.pending[0], s.n_past, (s.seq_id,), logits=True))
                s.pending = []
                s.n_past += 1
            return "sample"
        return None

    def step(self) -> bool:
        """One scheduling step; False when there is nothing to do.

        Running requests decode together in one batch. A newcomer's prompt (at most
        prefill_chunk tokens per step while others run) goes in that same batch when
        mix_prefill is on; by default it gets its own call, which keeps every request's
        logits bit-identical to running alone (see README, "Batching and numerics").
        """
        with self._cond:
            self._admit()
            decoding = [r for r in self._active if _is_decoding(r)]
            prefilling = [r for r in self._active if r not in decoding]
            chunk = self.prefill_chunk if decoding else self.backend.n_batch
            if self.mix_prefill:
                return self._run(decoding + prefilling, chunk)
            ran = self._run(decoding, 0)
            return self._run(prefilling[:1], chunk) or ran

    def _run(self, requests: List[_Request], prefill_budget: int) -> bool:
        """Decode one batch over `requests` (decoders first) and apply the post-decode actions."""
        entries: List[BatchEntry] = []
        plans = []
        limit = None
        for req in requests:
            is_prefill = not _is_decoding(req)
            if is_prefill and limit is None:
                limit = min(self.backend.n_batch, len(entries) + prefill_budget)
            budget = (limit if is_prefill else self.backend.n_batch) - len(entries)
            if budget <= 0:
                break
            plans.append((req, self._plan(req, entries, budget)))
        if not entries:
            return False
        # Decode without the lock so consumers can take events (and cancel) meanwhile.
        error: Optional[DecodeError] = None
        self._decoding = True
        self._lock.release()
        try:
            self.backend.decode(entries)
        except DecodeError as exc:
            error = exc
        finally:
            self._lock.acquire()
            self._decoding = False
        self.steps += 1
        for req, action in plans:
            if req.phase == "done":
                continue  # cancelled during the decode
            if error is not None:
                self._finish(req, "error", error)
            elif action == "copy":
                b = req.seqs[1]
                # A holds exactly the shared prefix now; a whole-sequence copy works in split caches too.
                self.backend.seq_copy(req.seqs[0].seq_id, b.seq_id, -1, -1)
                b.n_past = req.shared
                req.phase = "rest"
            elif action == "sample":
                self._sample(req)
        while self._deferred:
            self._release_seq(self._deferred.pop())
        return True

    def _sample(self, req: _Request) -> None:
        a = req.seqs[0]
        zp = self.backend.logits_row(a.final_index)
        z0 = self.backend.logits_row(req.seqs[1].final_index) if req.aligned else None
        try:
            choice = self.chooser.choose(zp, z0, req.params, req.rng, req.history)
        except LaEdgeError as exc:
            self._finish(req, "error", exc)
            return
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
            for s in req.seqs:
                s.pending = [tok]
        self._cond.notify_all()

    # ---- consumption -------------------------------------------------------------------
    def next_event(self, req: _Request) -> Optional[StepEvent]:
        """The request's next event; drives step() itself unless a background loop runs."""
        with self._cond:
            while True:
                if req.events:
                    return req.events.popleft()
                if req.phase == "done":
                    if req.error is not None and req.finish_reason == "error":
                        err, req.error = req.error, None
                        raise err
                    return None
                if self._background is not None:
                    self._cond.wait(0.5)
                else:
                    self.step()

    def start(self) -> None:
        """Run steps in a background thread (for servers and concurrent callers)."""
        with self._cond:
            if self._background is not None:
                return
            self._stopping = False
            self._background = threading.Thread(target=self._loop, name="la-edge-engine", daemon=True)
            self._background.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._background is not None:
            self._background.join(timeout=10)
            self._background = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._active and not self._queue:
                    self._cond.wait(0.5)
                    continue
            if not self.step():
                time.sleep(0.001)  # nothing could run this step; do not spin
