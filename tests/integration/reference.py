"""An independent slow path for tests: one llama.cpp context per prompt, NumPy math written here."""


import llama_cpp
import numpy as np


class SeparateContext:
    """A private single-sequence llama.cpp context; eval() returns a copy of the last logits row."""

    def __init__(self, model, n_ctx=2048, n_threads=2):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, 512, 512, 1
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(model, p)
        assert self.ctx
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def eval(self, tokens):
        for i in range(0, len(tokens), 512):
            chunk = tokens[i:i + 512]
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(chunk)))
            assert rc == 0, rc
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self):
        llama_cpp.llama_free(self.ctx)


def nucleus(zp, p, t):
    """Token ids whose principled probability mass ranked above them is < p."""
    x = zp.astype(np.float64) / t
    w = np.exp(x - x.max())
    probs = w / w.sum()
    order = np.argsort(-zp, kind="stable")
    above = np.cumsum(probs[order]) - probs[order]
    keep = order[above < p]
    return keep if keep.size else order[:1]


def aligned_greedy(model, tokens_p, tokens_0, ratio, n, is_eog, p_m=0.8, t_m=1.0):
    """Greedy Linear Alignment with two separate contexts: the test's own slow reference."""
    a, b = SeparateContext(model), SeparateContext(model)
    out = []
    zp, z0 = a.eval(list(tokens_p)), b.eval(list(tokens_0))
    for _ in range(n):
        keep = nucleus(zp, p_m, t_m)
        z = zp + np.float32(ratio) * (zp - z0)
        tok = int(keep[np.argmax(z[keep])])
        out.append(tok)
        if is_eog(tok):
            break
        zp, z0 = a.eval([tok]), b.eval([tok])
    a.close()
    b.close()
    return out


def aligned_gaps(model, tokens_p, tokens_0, ratio, chosen, p_m=0.8, t_m=1.0):
    """Teacher-forced along `chosen`: per step, how far below the reference's best aligned logit
    the chosen token lies (0.0 = the reference's own greedy pick, inf = outside its nucleus)."""
    a, b = SeparateContext(model), SeparateContext(model)
    gaps = []
    zp, z0 = a.eval(list(tokens_p)), b.eval(list(tokens_0))
    for tok in chosen:
        keep = nucleus(zp, p_m, t_m)
        z = zp + np.float32(ratio) * (zp - z0)
        best = float(z[keep].max())
        gaps.append(best - float(z[tok]) if tok in keep else float("inf"))
        zp, z0 = a.eval([tok]), b.eval([tok])
    a.close()
    b.close()
    return gaps
