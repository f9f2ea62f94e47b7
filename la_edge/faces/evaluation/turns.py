"""`la-edge eval --turns`: does an instruction in the system message still hold late in a chat?

Each scripted conversation runs 8 user turns; the model's own answers stay in the history. The
instruction is absent ("none"), in the system message as a stock app sends it ("system"), or
taken from the system message as the principle at ratio R ("system as principle r=R", what
`serve --principle-from system` does). Adherence is checked at every turn.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Dict, List, Optional, TextIO

from ...runtime.prompts import system_as_principle
from . import checkers
from .compose import ROUND, answer
from .runner import EvalConfig, Progress, _load_json, _mean, ci, setting_name


def turn_settings(ratios) -> List[str]:
    """none, system, then 'system as principle r=R' per nonzero ratio."""
    return ["none", "system"] + [f"system as principle {setting_name(r)}" for r in ratios if r != 0.0]


def load_turns(limit: Optional[int] = None) -> Dict[str, object]:
    """The packaged instructions and the first `limit` conversations."""
    doc = _load_json("turns.json")
    return {**doc, "conversations": doc["conversations"][:limit]}


def _reply(la, config: EvalConfig, setting: str, instruction: str, history: List[Dict[str, str]]):
    if setting == "none":
        return answer(la, config, messages=history)
    messages = [{"role": "system", "content": instruction}] + history
    if setting == "system":
        return answer(la, config, messages=messages)
    principle, rest = system_as_principle(messages)  # as `serve --principle-from system` does
    return answer(la, config, float(setting.rsplit("=", 1)[1]), messages=rest, principle=principle)


def run_turns(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr, model: str = "") -> Dict[str, object]:
    """Adherence per instruction, setting and turn over the scripted conversations."""
    config.validate()
    data = load_turns(config.limit)
    instructions, convs = data["instructions"], data["conversations"]
    if checkers.uses([i["checker"] for i in instructions], "language"):
        checkers.require_langdetect()
    settings = turn_settings(config.ratios)
    n_turns = max(len(c["turns"]) for c in convs)
    bar = Progress(len(instructions) * len(convs) * len(settings) * n_turns, progress)
    samples = []
    for ins in instructions:
        for conv in convs:
            for s in settings:
                history: List[Dict[str, str]] = []
                for turn, user in enumerate(conv["turns"], 1):
                    history.append({"role": "user", "content": user})
                    row = _reply(la, config, s, ins["system"], history)
                    history.append({"role": "assistant", "content": row["text"]})
                    row.update(instruction=ins["id"], conversation=conv["id"], setting=s, turn=turn,
                               passed=checkers.check(row["text"], ins["checker"],
                                                     finished=row["finish_reason"] == "stop"))
                    samples.append(row)
                    bar.step(f"{ins['id']} {conv['id']} {s} {turn}")
    return {"mode": "turns", "model": model, "config": asdict(config), "settings": settings,
            "checked_turns": data["checked_turns"], "turns": n_turns,
            "instructions": {i["id"]: i["system"] for i in instructions},
            "results": _results(samples, [i["id"] for i in instructions], settings, n_turns),
            "all_ci": {s: ci([float(x["passed"]) for x in samples if x["setting"] == s]) for s in settings},
            "samples": samples}


def _results(samples, ids: List[str], settings: List[str], n_turns: int) -> Dict[str, object]:
    """Adherence by instruction (and over all of them) -> setting -> turn ('1'..'8')."""
    def rate(rows):
        return round(_mean([float(r["passed"]) for r in rows]), ROUND)

    out = {}
    for iid in ids + ["all"]:
        rows = [x for x in samples if iid == "all" or x["instruction"] == iid]
        out[iid] = {s: {str(t): rate([x for x in rows if x["setting"] == s and x["turn"] == t])
                        for t in range(1, n_turns + 1)} for s in settings}
    return out
