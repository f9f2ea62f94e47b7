"""Render evaluation results: a Markdown table, a PNG plot (needs matplotlib) and the output folder."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from ..tables import markdown_lines as _table, pyplot


CI_NOTE = "; [a, b]: 95% bootstrap interval over answers."


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pct_ci(x: float, ci: Optional[List[float]]) -> str:
    """'62% [50, 75]': the value and its 95% bootstrap interval (when the results have one)."""
    return _pct(x) + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")


def markdown(doc: Dict[str, object]) -> str:
    """A Markdown report of a results document (principles or mc mode)."""
    settings = doc["settings"]
    cfg = doc["config"]
    tokens = "first token only" if doc["mode"] == "mc" else f"max_tokens={cfg['max_tokens']}"
    head = (f"Model: `{os.path.basename(doc.get('model') or '') or 'default'}`; {tokens}, "
            f"temperature={cfg['temperature']:g}, seed={cfg['seed']}.")
    if doc["mode"] == "compose":
        return compose_markdown(doc, head)
    if doc["mode"] == "ifeval":
        from .ifeval import ifeval_markdown

        return ifeval_markdown(doc, head)
    if doc["mode"] == "documents":
        from .documents import documents_markdown

        return documents_markdown(doc, head)
    if doc["mode"] == "turns":
        return turns_markdown(doc, head)
    if doc["mode"] == "avoid":
        return avoid_markdown(doc, head)
    if doc["mode"] == "mc":
        rows = [[s, _pct(r["accuracy"]), f"{r['correct']}/{r['n']}", _pct(r["answered"]), f"{r['letter_mass']:.2f}",
                 f"{r['answer_prob']:.2f}"] for s, r in doc["results"].items()]
        return "\n".join(["## Personal-preference multiple choice", "", head, ""] + _table(
            ["setting", "accuracy", "correct", "letter in top-20", "mean letter mass", "mean P(preferred) among letters"],
            rows)) + "\n"
    res, overall = doc["results"], doc["overall"]
    adh = [[pid] + [_pct(res[pid][s]["adherence"]) for s in settings] for pid in res]
    adh.append(["**all**"] + [f"**{_pct_ci(overall[s]['adherence'], overall[s].get('adherence_ci'))}**"
                              for s in settings])
    flu = [[name] + [f"{overall[s][key]:.2f}" if key != "words" else f"{overall[s][key]:.0f}" for s in settings]
           for name, key in (("distinct-1", "distinct_1"), ("distinct-2", "distinct_2"),
                             ("rep-4 (lower is better)", "rep_4"), ("mean words", "words"))]
    n = overall[settings[0]]["n"]
    return "\n".join(
        ["## Principle adherence", "", head + f" {n} answers per setting" + CI_NOTE, ""] + _table(["principle"] + settings, adh)
        + ["", "## Fluency guard (all principles)", ""] + _table(["metric"] + settings, flu)) + "\n"


def _fluency_rows(flu: Dict[str, Dict[str, float]], settings: List[str]) -> List[List[str]]:
    return [[name] + [f"{flu[s][key]:.2f}" if key != "words" else f"{flu[s][key]:.0f}" for s in settings]
            for name, key in (("distinct-2", "distinct_2"), ("rep-4 (lower is better)", "rep_4"),
                              ("mean words", "words"), ("mean ratio scale", "ratio_scale"))]


def compose_markdown(doc: Dict[str, object], head: str) -> str:
    """Per-part adherence of the combination tasks, fluency, and the avoid tasks' word rate."""
    res, settings = doc["results"], doc["settings"]
    rows = [[cell] + [_pct(by[s]) for s in settings] for cell, by in res["parts"].items()]
    rows.append(["**mean per part**"] + [f"**{_pct_ci(res['mean'][s], res.get('mean_ci', {}).get(s))}**"
                                         for s in settings])
    rows.append(["all parts of an answer"] + [_pct_ci(res["all_parts"][s], res.get("all_parts_ci", {}).get(s))
                                              for s in settings])
    av, asettings = doc["avoid"], doc["avoid_settings"]
    return "\n".join(
        ["## Several principles: adherence per part", "", head + f" {res['n']} answers per setting" + CI_NOTE, ""]
        + _table(["combination: part"] + settings, rows)
        + ["", "## Fluency guard (combination tasks)", ""] + _table(["metric"] + settings,
                                                                    _fluency_rows(res["fluency"], settings))
        + ["", "## Avoid a word", "", f"{av['n']} answers per setting (lower is better).", ""]
        + _table(["metric"] + asettings, _avoid_rows(av, asettings))) + "\n"


def _avoid_rows(av: Dict[str, object], settings: List[str]) -> List[List[str]]:
    """The avoid table's rows: rate with interval, words per answer, the change against plain and
    what is left of plain's users (--forbidden-words), distinct-2 and rep-4."""
    rows = [["answers using a forbidden word"] + [_pct_ci(av["rate"][s], av.get("rate_ci", {}).get(s))
                                                  for s in settings],
            ["forbidden words per answer"] + [f"{av['count'][s]:.2f}" for s in settings]]
    if "vs_plain" in av:
        rows.append(["change against plain (points)"] + ["" if s == "plain" else
                                                         "{:+.0f} [{:+.0f}, {:+.0f}]".format(
                                                             100 * (av["rate"][s] - av["rate"]["plain"]),
                                                             *(100 * x for x in av["vs_plain"][s])) for s in settings])
        users = f"of the {av.get('plain_users_n', '')} prompts plain used a word in, still used"
        rows.append([users] + ["n/a" if av["plain_users"][s] is None else _pct(av["plain_users"][s]) for s in settings])
    return rows + _fluency_rows(av["fluency"], settings)[:2]


def avoid_markdown(doc: Dict[str, object], head: str) -> str:
    """The forbidden-word rate per avoid setting on the larger avoid set (`eval --forbidden-words`)."""
    av, settings, src = doc["avoid"], doc["avoid_settings"], doc["sources"]
    what = (f" {av['n']} prompts per setting ({src['ifeval']} from IFEval, {src['la_edge']} la-edge's own); "
            "lower is better" + CI_NOTE)
    return "\n".join(["## Avoid words: forbidden-word rate", "", head + what, ""]
                      + _table(["metric"] + settings, _avoid_rows(av, settings))) + "\n"


def turns_markdown(doc: Dict[str, object], head: str) -> str:
    """Adherence to the system message's instruction at the checked turns, per setting."""
    turns = [str(t) for t in doc["checked_turns"]]
    rows = []
    for iid, by in doc["results"].items():
        name = "**all**" if iid == "all" else f"{iid}: {doc['instructions'][iid]}"
        for s, per in by.items():
            mean = sum(per.values()) / len(per)
            interval = doc.get("all_ci", {}).get(s) if iid == "all" else None
            rows.append([name, s] + [_pct(per[t]) for t in turns] + [_pct_ci(mean, interval)])
    n = len(doc["samples"]) // (len(doc["settings"]) * doc["turns"] * (len(doc["results"]) - 1))
    return "\n".join(["## The system message's instruction over a conversation", "",
                      head + f" {n} conversation{'s' if n != 1 else ''} per instruction; the model's own answers stay in "
                      "the history" + CI_NOTE, ""]
                     + _table(["instruction", "setting"] + [f"turn {t}" for t in turns]
                              + [f"turns 1-{doc['turns']}"], rows)) + "\n"


def plot(doc: Dict[str, object], path: str) -> Optional[str]:
    """Write a PNG of adherence (or accuracy) and fluency per setting; returns a message if skipped."""
    try:
        plt = pyplot()
    except ImportError as exc:
        return f"no plot.png: {exc}"
    settings = doc["settings"]
    x = list(range(len(settings)))
    if doc["mode"] == "compose":
        return _plot_compose(plt, doc, path)
    if doc["mode"] in ("ifeval", "documents"):
        from importlib import import_module

        return import_module(f".{doc['mode']}", __package__).plot(plt, doc, path)
    if doc["mode"] == "turns":
        return _plot_turns(plt, doc, path)
    if doc["mode"] == "avoid":
        fig, ax = plt.subplots(figsize=(6, 4))
        names = doc["avoid_settings"]
        _bars(ax, names, [doc["avoid"]["rate"][s] for s in names], "tab:red",
              "Answers using a forbidden word (lower is better)")
        _save(plt, fig, path)
        return None
    if doc["mode"] == "mc":
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(x, [doc["results"][s]["accuracy"] for s in settings], "o-", label="accuracy")
        ax.plot(x, [doc["results"][s]["answer_prob"] for s in settings], "s--", label="P(preferred) among letters")
        axes = [ax]
        ax.set_title("Personal-preference multiple choice")
    else:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for pid, by in doc["results"].items():
            ax.plot(x, [by[s]["adherence"] for s in settings], ".-", alpha=0.6, label=pid)
        ax.plot(x, [doc["overall"][s]["adherence"] for s in settings], "ko-", linewidth=2.5, label="all")
        ax.set_title("Adherence rate")
        for key in ("distinct_1", "distinct_2", "rep_4"):
            ax2.plot(x, [doc["overall"][s][key] for s in settings], "o-", label=key)
        ax2.set_title("Fluency guard")
        axes = [ax, ax2]
    for a in axes:
        a.set_xticks(x)
        a.set_xticklabels(settings)
        a.set_ylim(-0.02, 1.02)
        a.set_xlabel("setting (plain, principle in prompt r=0, Linear Alignment ratio r)")
        a.legend(fontsize=7)
    _save(plt, fig, path)
    return None


def _bars(ax, names: List[str], values: List[float], color: str, title: str) -> None:
    ax.bar(range(len(names)), values, color=color)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_compose(plt, doc: Dict[str, object], path: str) -> None:
    settings, asettings = doc["settings"], doc["avoid_settings"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    _bars(ax, settings, [doc["results"]["mean"][s] for s in settings], "tab:blue",
          "Mean adherence per part (higher is better)")
    _bars(ax2, asettings, [doc["avoid"]["rate"][s] for s in asettings], "tab:red",
          "Answers using the forbidden word (lower is better)")
    _save(plt, fig, path)


def _plot_turns(plt, doc: Dict[str, object], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    turns = list(range(1, doc["turns"] + 1))
    for s, per in doc["results"]["all"].items():
        ax.plot(turns, [per[str(t)] for t in turns], "o-", label=s)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("turn")
    ax.set_title("Instruction in the system message followed (all instructions)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def write_outputs(doc: Dict[str, object], out_dir: str) -> List[str]:
    """Write results.json, results.md and plot.png into out_dir; returns notes (e.g. plot skipped)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(doc))
    note = plot(doc, os.path.join(out_dir, "plot.png"))
    return [note] if note else []
