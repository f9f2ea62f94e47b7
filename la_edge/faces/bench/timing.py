"""What every decode benchmark times: a private one-sequence backend (the baselines) and a request.

Times are decode only: tokens/s counts the generated tokens after the first, whose wait is the
time to first token (prefill) and is reported apart.
"""

from __future__ import annotations

import resource
import time
from typing import Dict, List, Sequence

from ...decoding.combination import Combination
from ...decoding.params import GenerationParams
from ...decoding.rng import SplitMix64


class Solo:
    """A private backend of n_seq sequences (the baselines), through the Backend protocol.

    It opens the same model file with the same options as `backend`, with n_seq sequences.
    """

    def __init__(self, backend, n_seq: int = 1):
        from ...backends import load_backend

        self.b = load_backend(backend.path, backend.name, backend.options.with_(n_seq_max=n_seq))
        self.n_vocab = self.b.n_vocab
        self.pos = [0]

    def reset(self, n_seq: int = 1) -> None:
        """Empty every sequence; the next steps use the first n_seq."""
        for s in range(self.b.n_seq_max):
            self.b.seq_remove(s)
        self.pos = [0] * n_seq

    def eval(self, tokens: Sequence[int], seq: int = 0):
        """Decode tokens of one sequence in n_batch chunks; the last token's logits row."""
        from ...backends.base import BatchEntry

        for i in range(0, len(tokens), self.b.n_batch):
            chunk = tokens[i:i + self.b.n_batch]
            self.b.decode([BatchEntry(t, self.pos[seq] + k, (seq,), k == len(chunk) - 1)
                           for k, t in enumerate(chunk)])
            self.pos[seq] += len(chunk)
        return self.b.logits_row(len(chunk) - 1)

    def step(self, token: int):
        """One decode call: `token` appended to every sequence; the first sequence's logits row."""
        from ...backends.base import BatchEntry

        self.b.decode([BatchEntry(token, p, (s,), True) for s, p in enumerate(self.pos)])
        self.pos = [p + 1 for p in self.pos]
        return self.b.logits_row(0)

    def argmax(self, row) -> int:
        import numpy as np  # after llama.cpp loaded (see README, "GPU": numpy first crashed one CUDA image)

        if not isinstance(row, np.ndarray):
            row = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        return int(np.argmax(row))

    def close(self) -> None:
        self.b.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this whole process so far (ru_maxrss never goes down)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _speed(t0: float, t1: float, t2: float, count: int) -> Dict[str, float]:
    return {"ttft_s": t1 - t0, "tokens_per_s": (count - 1) / (t2 - t1) if count > 1 else 0.0}


def time_plain(solo: Solo, tokens: List[int], n: int) -> Dict[str, float]:
    """Greedy plain decoding of n tokens on a private backend."""
    solo.reset()
    t0 = time.perf_counter()
    tok = solo.argmax(solo.eval(tokens))
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = solo.argmax(solo.eval([tok]))
    return _speed(t0, t1, time.perf_counter(), n)


def time_forward(solo: Solo, prompts: Sequence[List[int]], n: int) -> Dict[str, float]:
    """The K-token cap side by side: K prompts in one private backend, one decode call of K tokens
    per step, greedy on the first row, no combination: what aligned decoding would cost if la_edge
    added nothing to llama.cpp's batched forward pass."""
    solo.reset(len(prompts))
    t0 = time.perf_counter()
    rows = [solo.eval(p, s) for s, p in enumerate(prompts)]
    tok = solo.argmax(rows[0])
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = solo.argmax(solo.step(tok))
    return _speed(t0, t1, time.perf_counter(), n)


def time_naive(chooser, a: Solo, b: Solo, tp: List[int], t0_: List[int], n: int,
               params: GenerationParams) -> Dict[str, float]:
    """Linear Alignment over two private backends: two decode calls per step, la_edge's sampler."""
    choose, combo, rng = chooser.choose, Combination.linear_alignment(params.ratio), SplitMix64(0)
    a.reset()
    b.reset()
    t0 = time.perf_counter()
    tok = choose((a.eval(tp), b.eval(t0_)), combo, params, rng, []).token
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = choose((a.eval([tok]), b.eval([tok])), combo, params, rng, []).token
    return _speed(t0, t1, time.perf_counter(), n)


def time_request(la, request, params: GenerationParams) -> Dict[str, float]:
    """One engine request (a PromptPair or a BranchSet) through Aligner.steps, iterated to its end."""
    _, events = la.steps(request, params)  # tokenized here, as the baselines' prompts were before
    t0 = time.perf_counter()
    count, t1 = 0, None
    for _ in events:
        count += 1
        if t1 is None:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return _speed(t0, t1 if t1 is not None else t2, t2, count)
