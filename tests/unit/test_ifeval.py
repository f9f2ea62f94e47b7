"""eval --ifeval without a model: the split of IFEval prompts, the checkers, the statistics, and the
eval flags refused before a model loads."""

import importlib.util
import json
import os

import pytest

from la_edge.faces.cli import main
from la_edge.faces.evaluation import ifeval
from la_edge.faces.evaluation.runner import DATA_DIR

if importlib.util.find_spec("if_verifiable") is None:  # its own __init__ needs `datasets`: not imported here
    pytest.skip("if-verifiable is not installed (scripts/install.sh --test installs it)", allow_module_level=True)
ROWS = {r["key"]: r for r in (json.loads(x) for x in open(os.path.join(DATA_DIR, ifeval.DATA_FILE), encoding="utf-8"))}


def test_all_541_prompts_are_split_or_excluded_with_a_reason():
    items, excluded, total = ifeval.load_items()
    assert total == 541 and len(items) + sum(excluded.values()) == 541
    assert len(items) >= 250
    for it in items:
        assert it.task and " ".join(it.task.split()) in " ".join(it.prompt.split()), it.key
        assert not ifeval.LEFTOVER.search(it.task), it.key
    assert [it.key for it in ifeval.load_items(10)[0]] == [it.key for it in ifeval.load_items(10)[0]]


@pytest.mark.parametrize("key,task", [
    (1800, "Explain to a group of elementary school students why we have seasons."),  # "P.S." is no sentence end
    (1098, "What is a name that people call God?"),  # "******" left out
    (1236, "Write an advertisement for a new line of comfortable armchairs designed to withstand the scrutiny of "
           "any interior designer."),
    (1643, "\"Coincidence is God's way of remaining anonymous.\" What are your thoughts on this quote?"),
    (1147, None),  # a forbidden keyword sits in the quoted statement: not a tail, excluded
    (227, "I have a golden retriever and a poodle. Is the poodle bigger than the golden retriever?"),  # options: a tail
])
def test_split_keeps_the_task_and_drops_whole_instructions(key, task):
    item, why = ifeval.split(ROWS[key])
    assert (item.task if item else None) == task, why


def test_the_principle_is_the_checkers_own_text():
    item, _ = ifeval.split(ROWS[1236])
    assert item.principle == "There should be 3 paragraphs. Paragraphs are separated with the markdown divider: ***"


def test_score_strict_and_loose():
    item, _ = ifeval.split(ROWS[1800])  # a postscript starting with P.S.
    assert ifeval.score(item, "Seasons come from the tilt.\nP.S. Ask me more!")["prompt_strict"]
    assert not ifeval.score(item, "Seasons come from the tilt.")["prompt_loose"]
    assert not ifeval.score(item, "")["prompt_strict"]


def test_summary_intervals_and_paired_gain():
    rows = [{"key": k, "setting": s, "instruction_id_list": ["a:b"], "strict": [ok], "loose": [ok],
             "prompt_strict": ok, "prompt_loose": ok}
            for k in range(20) for s, ok in (("prompt", k < 10), ("r=2", k < 15))]
    res = ifeval.summarize(rows, ["prompt", "r=2"])
    assert res["prompt"]["prompt_strict"]["value"] == 0.5 and res["r=2"]["prompt_strict"]["value"] == 0.75
    lo, hi = res["r=2"]["vs_prompt"]["ci"]
    assert res["r=2"]["vs_prompt"]["value"] == 0.25 and 0.0 < lo <= 0.25 <= hi
    assert res["by_type"]["r=2"] == {"a": [15, 20]}


@pytest.mark.parametrize("argv,message", [
    (["eval", "--turns", "--ratio-guard"], "--ratio-guard"),
    (["eval", "--ifeval", "--ratio-guard"], "--ratio-guard"),
    (["eval", "--parallel", "0"], "parallel"),
    (["eval", "--parallel", "33"], "--parallel"),
    (["eval", "--mc", "--parallel", "4"], "--parallel"),
])
def test_bad_eval_flags_exit_2_before_a_model_loads(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_forbidden_words_set_joins_three_sources_once_each():
    from la_edge.faces.evaluation.compose import load_avoid_set, load_avoid_tasks

    tasks = load_avoid_set()
    prompts, sources = [t.prompt for t in tasks], [t.source for t in tasks]
    assert len(set(prompts)) == len(prompts) and len(set(sources)) == len(sources)
    assert tasks[:8] == load_avoid_tasks()  # the eight of --compose come first, unchanged
    ifeval_keys = {s for s in sources if s.startswith("ifeval:")}
    assert len(ifeval_keys) >= 15 and sum(s.startswith("la_edge:avoid:") for s in sources) == 48
    for t in tasks:
        assert t.words and all(w.strip() for w in t.words) and t.prompt.strip()
        assert all(f"'{w}'" in t.say and f"'{w}'" in t.avoid for w in t.words)
        # the task alone: IFEval's forbidden-word instruction is not left in it
        assert not any(x in t.prompt.lower() for x in ("do not include", "do not use", "without using", "avoid using"))
    assert [t.source for t in load_avoid_set(5)] == [sources[int(i * len(tasks) / 5)] for i in range(5)]
