"""The packaged --compose and --turns tasks and their settings (no model)."""

import pytest

from la_edge.faces.evaluation import checkers
from la_edge.faces.evaluation.compose import avoid_settings, compose_settings, load_avoid_tasks, load_compose_tasks
from la_edge.faces.evaluation.runner import EvalConfig
from la_edge.faces.evaluation.turns import load_turns, turn_settings


def test_settings():
    assert compose_settings((2.0,)) == ["plain", "joined r=0", "joined r=2", "composed r=2", "composed r=2 undivided",
                                        "composed r=2 adaptive"]
    assert compose_settings((0.0, 1.5), guard=True) == [
        "plain", "joined r=0", "joined r=1.5", "composed r=1.5", "composed r=1.5 undivided", "composed r=1.5 adaptive",
        "joined r=1.5 guard", "composed r=1.5 guard"]
    assert avoid_settings((2.0,)) == ["plain", "say r=0", "say r=2", "avoid s=2", "negative g=3"]
    assert turn_settings((2.0, 4.0)) == ["none", "system", "system as principle r=2", "system as principle r=4"]
    assert EvalConfig(ratios=(2.0,), adaptive=True).settings() == ["plain", "r=0", "r=2", "r=2 adaptive"]
    assert EvalConfig(ratios=(2.0,), guard=True).settings() == ["plain", "r=0", "r=2", "r=2 guard"]


def test_compose_tasks():
    tasks = load_compose_tasks()
    assert len(tasks) == 24 and len(load_compose_tasks(2)) == 6
    for t in tasks:
        assert 2 <= len(t.parts) <= 3 and t.prompt.strip()
        assert t.joined == " ".join(p.principle for p in t.parts)
        for p in t.parts:
            assert p.checker["type"] in checkers.CHECKERS
    avoid = load_avoid_tasks()
    assert len(avoid) == 8 and avoid[0].words == ("rock",)
    assert avoid[0].say == "Do not include the words 'rock' anywhere in your response."
    assert avoid[0].avoid == "Use the words 'rock' in your response."


def test_turns_data():
    data = load_turns()
    assert data["checked_turns"] == [1, 4, 8] and len(data["conversations"]) == 3
    assert all(len(c["turns"]) == 8 for c in data["conversations"]) and len(load_turns(1)["conversations"]) == 1
    assert checkers.check("Tu veux essayer?", data["instructions"][1]["checker"])
    assert not checkers.check("Try it.", data["instructions"][1]["checker"])


def test_compose_and_turns_refuse_their_own_task_flags(capsys):
    import argparse

    from la_edge.faces.evaluation.cli import add_eval_parser
    from la_edge.errors import InvalidParameterError

    parser = argparse.ArgumentParser(prog="la-edge")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    for flag in ("--compose", "--turns"):
        args = parser.parse_args(["eval", flag, "--principles", "concise"])
        with pytest.raises(InvalidParameterError, match=flag):
            args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--compose", "--turns"])
