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
    """A private single-sequence backend (plain and naive baselines), through the Backend protocol.

    It opens the same model file with the same options as `backend`, with one sequence.
    """

    def __init__(self, backend):
        from ...backends import load_backend

        self.b = load_backend(backend.path, backend.name, backend.options.with_(n_seq_max=1))
        self.n_vocab = self.b.n_vocab
        self.pos = 0

    def reset(self) -> None:
        self.b.seq_remove(0)
        self.pos = 0

    def eval(self, tokens: Sequence[int]):
        """Decode tokens in n_batch chunks; the last token's logits row."""
        from ...backends.base import BatchEntry

        for i in range(0, len(tokens), self.b.n_batch):
            chunk = tokens[i:i + self.b.n_batch]
            self.b.decode([BatchEntry(t, self.pos + k, (0,), k == len(chunk) - 1) for k, t in enumerate(chunk)])
            self.pos += len(chunk)
        return self.b.logits_row(len(chunk) - 1)

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
