"""The logits rows the engine hands its sampler, recorded for the exactness checks in benchmarks/.

White-box on purpose (like the tests' reference loop): it swaps the engine's sampler for a spy that
copies every decision's K rows, then calls the real one. Import llama_cpp before this module.
"""

import contextlib

import numpy as np


@contextlib.contextmanager
def recorded_rows(la):
    """Within the block, each engine decision appends a tuple of its K rows (NumPy copies) to the list yielded."""
    engine, inner, n_vocab = la.engine, la.engine.chooser, la.backend.n_vocab
    rows = []

    class Spy:
        path = inner.path

        def choose(self, logits, combo, *rest):
            rows.append(tuple(np.array(r, copy=True) if isinstance(r, np.ndarray)
                              else np.ctypeslib.as_array(r, shape=(n_vocab,)).copy() for r in logits))
            return inner.choose(logits, combo, *rest)

    engine.chooser = Spy()
    try:
        yield rows
    finally:
        engine.chooser = inner
