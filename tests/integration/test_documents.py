"""Documents (context-aware decoding): z = z_D + r (z_D - z_0), the documents in the principled branch only."""

import pytest

from la_edge import Aligner, GenerationParams, InvalidParameterError
from la_edge.errors import ContextOverflowError
from tests.integration.reference import aligned_greedy

DOC = "The Eiffel Tower was moved to Rome in 2021 and now stands next to the Colosseum."
Q = "Where is the Eiffel Tower?"
GREEDY = GenerationParams(temperature=0.0, max_tokens=20)


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512) as aligner:
        yield aligner


def test_documents_go_in_the_principled_branch_only(la):
    bs = la.documents(Q, [DOC, "Rome is the capital of Italy."])
    with_docs, plain = (b.text for b in bs.branches)
    assert "Document 1:\n" + DOC in with_docs and "Document 2:" in with_docs and DOC not in plain
    assert with_docs.index("Document 1") < with_docs.index(Q)
    # The reference keeps the headers with empty bodies: the branches differ by the documents' text only.
    assert plain == la.prompts("Document 1:\n\n\nDocument 2:\n\n\n" + Q).principled
    bare = la.documents(Q, [DOC, "Rome is the capital of Italy."], reference="none")
    assert bare.branches[0].text == with_docs and bare.branches[1].text == la.prompts(Q).principled
    for bad in ("None", "", None, "empty"):
        with pytest.raises(InvalidParameterError, match="reference"):
            la.documents(Q, [DOC], reference=bad)


@pytest.mark.parametrize("ratio,reference", [(1.0, "headers"), (2.0, "headers"), (1.0, "none")])
def test_fixed_cad_equals_two_separate_contexts(la, ratio, reference):
    bs = la.documents(Q, [DOC], ratio=ratio, reference=reference)
    res = la.generate(params=GREEDY, branches=bs)
    td, t0 = (la.tokenize(b.text) for b in bs.branches)
    assert res.tokens == aligned_greedy(la.backend.model.handle, td, t0, ratio, GREEDY.max_tokens, la.backend.is_eog)


def test_adaptive_cad_moves_the_weight_per_token(la):
    res = la.generate(params=GREEDY.with_(top_logprobs=1), branches=la.documents(Q, [DOC], adaptive=True))
    scales = [e.get("ratio_scale", 1.0) for e in res.logprobs]
    assert len(set(scales)) > 1 and all(0.0 <= s <= 1.0 for s in scales)


def test_bad_documents_are_refused(la):
    for bad in ([], [""], ["  "], [3]):
        with pytest.raises(InvalidParameterError, match="documents"):
            la.documents(Q, bad)
    with pytest.raises(InvalidParameterError, match="ratio"):
        la.documents(Q, [DOC], ratio=float("nan"))
    with pytest.raises(ContextOverflowError):  # a document larger than the context
        la.generate(params=GREEDY, branches=la.documents(Q, ["word " * 2000]))
