"""The data of `la-edge eval --documents` (scripts/make_documents_set.py) and the bootstrap interval."""

import collections
import importlib.util
import os

import pytest

from la_edge.faces.evaluation.documents import SETS, follows, from_memory, load_documents, mentions
from la_edge.faces.evaluation.stats import bootstrap_ci

DATA = load_documents()
ITEMS = DATA["items"]
CONFLICT = [it for it in ITEMS if it["set"] != "agree"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _names(item, memory=False):
    return [item["memory_answer"]] + item["memory_aliases"] if memory else [item["answer"]] + item["aliases"]


def test_sets_sizes_and_ids():
    counts = collections.Counter(it["set"] for it in ITEMS)
    assert len(ITEMS) >= 100 and set(counts) == set(SETS) and min(counts.values()) >= 20
    assert len({it["id"] for it in ITEMS}) == len(ITEMS)
    assert set(DATA["sets"]) == set(SETS) and DATA["instruction"]
    assert collections.Counter(it["set"] for it in load_documents(2)["items"]) == {s: 2 for s in SETS}


@pytest.mark.parametrize("item", ITEMS, ids=[it["id"] for it in ITEMS])
def test_the_documents_hold_the_answer_as_scored(item):
    text = "\n".join(item["documents"])
    assert follows(text, item) and not from_memory(text, item)
    assert not mentions(item["question"], _names(item) + _names(item, memory=True))
    if item["set"] == "agree":
        assert item["answer"] == item["memory_answer"]
    else:  # the passage contradicts the memory answer and never names it
        assert item["answer"] != item["memory_answer"] and not mentions(text, _names(item, memory=True))
        assert not mentions(" / ".join(_names(item)), _names(item, memory=True))


def test_long_multi_and_far_shapes():
    for it in ITEMS:
        docs = it["documents"]
        if it["set"] == "conflict-long":
            words = len(docs[0].split())
            assert len(docs) == 1 and 300 <= words <= 520, (it["id"], words)
            assert sum(len(list(_matches(docs[0], n))) for n in _names(it)[:1]) == 1  # stated once
        elif it["set"] == "conflict-multi":
            assert 3 <= len(docs) <= 4 and sum(follows(d, it) for d in docs) == 1
        else:
            assert len(docs) == 1 and len(docs[0].split()) < 60
        turns = it.get("turns")
        assert (turns is not None) == (it["set"] == "conflict-far")
        if turns:
            assert len(turns) in (8, 10) and [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
            assert not any(mentions(t["content"], _names(it) + _names(it, memory=True)) for t in turns)


def _matches(text, name):
    import re

    return re.finditer(r"(?<!\w)" + re.escape(name) + r"(?!\w)", text, re.IGNORECASE)


def test_scoring_is_case_insensitive_on_whole_words():
    assert mentions("it is in rome.", ["Rome"]) and not mentions("Romeo and Juliet", ["Rome"])
    assert mentions("The arch is in St. Louis!", ["St. Louis"]) and not mentions("Heliotrope", ["He"])
    item = {"answer": "Agra", "aliases": [], "memory_answer": "Moscow", "memory_aliases": []}
    assert from_memory("In Moscow.", item) and not from_memory("In Agra, not Moscow.", item)


def test_the_generator_rewrites_the_same_file():
    spec = importlib.util.spec_from_file_location("make_documents_set",
                                                  os.path.join(ROOT, "scripts", "make_documents_set.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0


def test_bootstrap_ci():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(values)
    assert lo < 0.3 < hi and 0.18 <= lo and hi <= 0.42 and (lo, hi) == bootstrap_ci(values, seed=0)
    assert bootstrap_ci(values, seed=1) != (lo, hi)
    with pytest.raises(ValueError):
        bootstrap_ci([])
