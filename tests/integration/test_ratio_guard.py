"""The ratio guard on the real model: against separate contexts with the rule written out, and the loop
it exists for (SmolLM2, "Answer in French.", r = 2, greedy, repeats itself)."""

import numpy as np
import pytest

from la_edge import Aligner, GenerationParams
from la_edge.faces.evaluation.checkers import fluency
from tests.integration.reference import SeparateContext, nucleus

PROMPT, PRINCIPLE = "Hello, who are you?", "Answer in French."
N = 64


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=1024, n_threads=1) as aligner:
        yield aligner


def _seen_before(h, n=4, window=64, hold=8):
    """Written independently of decoding/strength.py: any n-gram ending in the last `hold` tokens
    that also ends earlier, at most `window` tokens before it."""
    for end in range(len(h), max(n, len(h) - hold), -1):
        grams = {tuple(h[j:j + n]) for j in range(max(0, end - window), end - n)}
        if tuple(h[end - n:end]) in grams:
            return True
    return False


def guarded_greedy(model, tokens_p, tokens_0, ratio, n, is_eog, p_m=0.8, penalty=1.3, last_n=64):
    """Two private contexts; float64 z = z_P + r (z_P - z_0) over the nucleus of z_P, except while the
    answer repeats: z = z_P with llama.cpp's repeat penalty, over the nucleus of that penalised row."""
    cp, c0 = SeparateContext(model, n_threads=1), SeparateContext(model, n_threads=1)
    zp, z0 = cp.eval(list(tokens_p)), c0.eval(list(tokens_0))
    out = []
    for _ in range(n):
        if _seen_before(out):
            z = zp.astype(np.float64)
            seen = np.unique(out[-last_n:])
            z[seen] = np.where(z[seen] > 0, z[seen] / penalty, z[seen] * penalty)
            keep = nucleus(z, p_m, 1.0)
            tok = int(keep[np.argmax(z[keep])])
        else:
            keep = nucleus(zp, p_m, 1.0)
            z = zp.astype(np.float64) + ratio * (zp.astype(np.float64) - z0.astype(np.float64))
            tok = int(keep[np.argmax(z[keep])])
        out.append(tok)
        if is_eog(tok):
            break
        zp, z0 = cp.eval([tok]), c0.eval([tok])
    cp.close()
    c0.close()
    return out


def test_guarded_decoding_equals_separate_contexts(la):
    pair = la.prompts(PROMPT, PRINCIPLE)
    res = la.generate(params=GenerationParams(temperature=0.0, ratio=2.0, max_tokens=N, ratio_guard=True), pair=pair)
    ref = guarded_greedy(la.backend.model.handle, la.tokenize(pair.principled), la.tokenize(pair.plain), 2.0, N,
                         la.backend.is_eog)
    assert res.tokens == ref


def test_the_guard_breaks_the_loop_and_reports_where_it_held(la):
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=N)
    loop = la.generate(PROMPT, PRINCIPLE, params)
    request = la.submit(PROMPT, PRINCIPLE, params.with_(ratio_guard=True))
    scales = [c.ratio_scale for c in request.stream()]
    guarded = request.result()
    assert fluency(loop.text)["rep_4"] > 0.5  # the loop this exists for
    assert fluency(guarded.text)["rep_4"] < fluency(loop.text)["rep_4"] / 2
    assert 0.0 in scales and 1.0 in scales  # ratio_scale 0 marks the tokens the guard chose
    assert guarded.tokens[:4] == loop.tokens[:4]  # no repeat yet: the same tokens as without it
