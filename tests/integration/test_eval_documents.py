"""`la-edge eval --documents` end to end on the embedded model, and Aligner.documents(at=...)."""

import importlib.util
import json

import pytest

from la_edge import Aligner, InvalidParameterError
from la_edge.faces.cli import main
from la_edge.faces.evaluation.documents import SETS

HAS_PLOT = importlib.util.find_spec("matplotlib") is not None
SETTINGS = ["no document", "document in prompt", "CAD r=1", "CAD r=1 bare", "CAD adaptive"]


def test_eval_documents(model_path, tmp_path, capsys):
    out = tmp_path / "docs"
    argv = ["eval", "--documents", "--limit", "2", "--max-tokens", "16", "--json", "--quiet", "--parallel", "8",
            "--threads", "1", "--model", model_path, "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "documents" and doc["settings"] == SETTINGS and doc["config"]["ratios"] == [1.0]
    assert list(doc["results"]) == list(SETS) + ["conflict (all)", "all"]
    for group, by in doc["results"].items():
        n = 2 if group in SETS else 8 if group == "conflict (all)" else 10
        for s in SETTINGS:
            cell = by[s]
            assert cell["n"] == n and cell["follows_ci"][0] <= cell["follows"] <= cell["follows_ci"][1]
            lo, hi = cell["vs_prompt_ci"]
            assert 0.0 <= cell["memory"] <= 1.0 and lo <= cell["vs_prompt"] <= hi
        assert by["document in prompt"]["vs_prompt"] == 0.0 and 0.0 < by["CAD adaptive"]["ratio_scale"] <= 1.0
    assert set(doc["targets"]) == {"CAD r=1", "CAD r=1 bare", "CAD adaptive"}
    assert {"never_below", "plus_15", "no_agree_loss", "worst_set"} <= set(doc["targets"]["CAD r=1"])
    samples = doc["samples"]
    assert len(samples) == 50 and {s["setting"] for s in samples} == set(SETTINGS)
    by_id = {(s["id"], s["setting"]): s for s in samples}
    for s in samples:  # one decode with the documents, two with CAD; the question alone is shorter
        if s["setting"] != "no document":
            assert s["prompt_tokens"] > by_id[(s["id"], "no document")]["prompt_tokens"]
    assert json.loads((out / "results.json").read_text())["results"] == doc["results"]
    md = (out / "results.md").read_text()
    assert md.startswith("## Answers that follow the document") and "| conflict-far (n=2) |" in md
    assert (out / "plot.png").is_file() == HAS_PLOT


def test_a_bad_ratio_is_exit_2(capsys):
    assert main(["eval", "--documents", "--ratios", "200", "--quiet"]) == 2
    assert "ratio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512) as aligner:
        yield aligner


def test_documents_at_an_earlier_user_message(la):
    msgs = [{"role": "user", "content": "Read this."}, {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Where is the tower?"}]
    doc = "The Eiffel Tower stands in Rome."
    with_docs, plain = (b.text for b in la.documents(messages=msgs, documents=[doc], at=0).branches)
    assert with_docs.index("Document 1:\n" + doc) < with_docs.index("Read this.") < with_docs.index("Done.")
    headers = [dict(msgs[0], content="Document 1:\n\n\nRead this.")] + msgs[1:]
    assert plain == la.prompts(messages=headers).principled
    bare = la.documents(messages=msgs, documents=[doc], at=0, reference="none").branches[1].text
    assert bare == la.prompts(messages=msgs).principled
    last = la.documents(messages=msgs, documents=[doc]).branches[0].text
    assert last.index("Done.") < last.index("Document 1:") < last.index("Where is the tower?")
    assert la.documents(messages=msgs, documents=[doc], at=2).branches[0].text == last
    for bad in (1, 3, -1, True, "0"):
        with pytest.raises(InvalidParameterError, match="at must be"):
            la.documents(messages=msgs, documents=[doc], at=bad)
