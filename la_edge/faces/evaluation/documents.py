"""`la-edge eval --documents`: do answers follow a document that contradicts the model's memory?

Items (`data/documents.json`, written by scripts/make_documents_set.py) ask a question that a
passage answers; conflicting sets state a counterfactual, `agree` the true fact. Settings: the
question alone ("no document"), the documents in the user message with plain decoding ("document
in prompt": the principled branch of Aligner.documents alone), context-aware decoding at each
ratio ("CAD r=R": z = z_D + R (z_D - z_0), the plain branch keeping the document headers with empty
bodies), CAD as published at r = 1 ("CAD r=1 bare": the plain branch without the headers) and the
adaptive ratio at r = 1 ("CAD adaptive").
An answer follows the passage when it names the passage's answer or an alias (case-insensitive,
whole words); it gives the memory answer when it names the true answer and not the passage's.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, TextIO

from ...decoding.combination import Combination
from ...decoding.params import GenerationParams
from ...runtime.branches import BranchSet
from .runner import EvalConfig, Progress, _load_json, _mean, ci, run_all, setting_name

SETS = ("conflict-short", "conflict-long", "conflict-multi", "conflict-far", "agree")
NO_DOC, IN_PROMPT, BARE, ADAPTIVE = "no document", "document in prompt", "CAD r=1 bare", "CAD adaptive"
CONFLICT, ALL = "conflict (all)", "all"
ROUND = 4


def mentions(text: str, names: Sequence[str]) -> bool:
    """True when text names one of `names`, case-insensitive, as whole words."""
    return any(re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", text, re.IGNORECASE) for n in names)


def follows(text: str, item: Dict[str, object]) -> bool:
    """The answer names the passage's answer (or an alias)."""
    return mentions(text, [item["answer"]] + list(item["aliases"]))


def from_memory(text: str, item: Dict[str, object]) -> bool:
    """The answer names the model's memory answer and not the passage's (never, on agreeing items)."""
    return item["answer"] != item["memory_answer"] and not follows(text, item) \
        and mentions(text, [item["memory_answer"]] + list(item["memory_aliases"]))


def load_documents(limit: Optional[int] = None) -> Dict[str, object]:
    """The packaged data with the first `limit` items of each set."""
    doc = _load_json("documents.json")
    seen: Dict[str, int] = {}
    items = []
    for item in doc["items"]:
        seen[item["set"]] = seen.get(item["set"], 0) + 1
        if limit is None or seen[item["set"]] <= limit:
            items.append(item)
    return {**doc, "items": items}


def document_settings(ratios: Sequence[float]) -> List[str]:
    """no document, document in prompt, 'CAD r=R' per nonzero ratio, CAD r=1 bare, CAD adaptive (r = 1)."""
    return [NO_DOC, IN_PROMPT] + [f"CAD {setting_name(r)}" for r in ratios if r != 0.0] + [BARE, ADAPTIVE]


def _job(la, config: EvalConfig, item: Dict[str, object], setting: str, instruction: str) -> Dict[str, object]:
    """submit() keywords of one item under one setting."""
    question = f"{item['question']} {instruction}"
    where: Dict[str, object] = {"prompt": question}
    if item.get("turns"):  # the documents go in the first user turn, the question comes last
        where = {"messages": list(item["turns"]) + [{"role": "user", "content": question}], "at": 0}
    params = GenerationParams(temperature=config.temperature, seed=config.seed, max_tokens=config.max_tokens,
                              timeout=config.timeout, top_logprobs=1 if setting == ADAPTIVE else 0)
    if setting == NO_DOC:
        where.pop("at", None)
        return {"params": params, **where}
    ratio = 1.0 if setting in (IN_PROMPT, BARE, ADAPTIVE) else float(setting.rsplit("=", 1)[1])
    bs = la.documents(documents=item["documents"], ratio=ratio, adaptive=setting == ADAPTIVE,
                      reference="none" if setting == BARE else "headers", **where)
    if setting == IN_PROMPT:
        bs = BranchSet(bs.branches[:1], Combination.plain())
    return {"params": params, "branches": bs}


def _order(items: List[Dict[str, object]], settings: List[str], parallel: int):
    """(item, setting) cells, `parallel` items at a time setting by setting, the document first: each
    request then starts after the one before it on its item ended, and adopts that one's parked
    prompt (the prompt cache) instead of prefilling the documents again; the question alone comes
    last and finds the bare setting's plain branch (parked, unless a later setting evicted it)."""
    first = [IN_PROMPT] + [s for s in settings if s not in (IN_PROMPT, NO_DOC)] + [NO_DOC]
    return [(it, s) for b in range(0, len(items), parallel) for s in first for it in items[b:b + parallel]]


def _cell(rows: List[Dict[str, object]], base: List[Dict[str, object]]) -> Dict[str, object]:
    """Rates with 95% bootstrap intervals, and the paired change against `base` (same items)."""
    f = [float(r["follows"]) for r in rows]
    m = [float(r["memory"]) for r in rows]
    d = [a - float(b["follows"]) for a, b in zip(f, base)]
    out = {"n": len(rows), "follows": round(_mean(f), ROUND), "follows_ci": ci(f),
           "memory": round(_mean(m), ROUND), "memory_ci": ci(m),
           "vs_prompt": round(_mean(d), ROUND), "vs_prompt_ci": ci(d),
           "finished": round(_mean([float(r["finish_reason"] == "stop") for r in rows]), ROUND)}
    scales = [r["ratio_scale"] for r in rows if r.get("ratio_scale") is not None]
    if scales:
        out["ratio_scale"] = round(_mean(scales), ROUND)
    return out


def _targets(results: Dict[str, Dict[str, Dict[str, object]]], settings: List[str], sets: List[str]):
    """Issue 27's targets per CAD setting: never below the document in the prompt on any set; +15
    points on the conflicting set where the prompt does worst; no loss on agreeing passages."""
    conflict = [s for s in sets if s != "agree"]
    worst = min(conflict, key=lambda s: results[s][IN_PROMPT]["follows"]) if conflict else None
    out = {}
    for s in settings[2:]:
        below = [name for name in sets if results[name][s]["vs_prompt"] < 0]
        row = {"never_below": not below, "below_on": below}
        if worst:
            w = results[worst][s]
            row.update(worst_set=worst, gain_on_worst=w["vs_prompt"], gain_ci=w["vs_prompt_ci"],
                       plus_15=w["vs_prompt"] >= 0.15)
        if "agree" in sets:
            a = results["agree"][s]
            row.update(agree_change=a["vs_prompt"], agree_ci=a["vs_prompt_ci"], no_agree_loss=a["vs_prompt"] >= 0)
        out[s] = row
    return out


def run_documents(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr,
                  model: str = "") -> Dict[str, object]:
    """Faithfulness to the documents per set and setting; returns the results document."""
    config.validate()
    data = load_documents(config.limit)
    items, settings = data["items"], document_settings(config.ratios)
    cells = _order(items, settings, config.parallel)
    bar = Progress(len(cells), progress)
    jobs = [_job(la, config, it, s, data["instruction"]) for it, s in cells]
    answers = run_all(la, jobs, config.parallel, lambda i, _: bar.step(f"{cells[i][0]['id']} {cells[i][1]}"))
    samples = []
    rank = {key: k for k, key in enumerate([it["id"] for it in items] + settings)}
    for (it, s), res in sorted(zip(cells, answers), key=lambda c: (rank[c[0][0]["id"]], rank[c[0][1]])):
        scales = [e.get("ratio_scale", 1.0) for e in res.logprobs] if s == ADAPTIVE else []
        samples.append({"id": it["id"], "set": it["set"], "kind": it["kind"], "setting": s, "text": res.text,
                        "finish_reason": res.finish_reason, "follows": follows(res.text, it),
                        "memory": from_memory(res.text, it), "prompt_tokens": res.usage["prompt_tokens"],
                        "ratio_scale": round(_mean(scales), ROUND) if scales else None})
    sets = [name for name in SETS if any(it["set"] == name for it in items)]
    groups = {name: [name] for name in sets}
    groups[CONFLICT] = [name for name in sets if name != "agree"]
    groups[ALL] = sets
    results = {}
    for group, members in groups.items():
        by = {s: [x for x in samples if x["set"] in members and x["setting"] == s] for s in settings}
        results[group] = {s: _cell(by[s], by[IN_PROMPT]) for s in settings}
    return {"mode": "documents", "model": model, "config": asdict(config), "settings": settings,
            "sets": {name: data["sets"][name] for name in sets}, "instruction": data["instruction"],
            "results": results, "targets": _targets(results, settings, sets), "samples": samples}


def _with_ci(x: float, ci: Sequence[float], signed: bool = False) -> str:
    fmt = (lambda v: f"{100 * v:+.0f}") if signed else (lambda v: f"{100 * v:.0f}")
    return f"{fmt(x)}{'' if signed else '%'} [{fmt(ci[0])}, {fmt(ci[1])}]"


def documents_markdown(doc: Dict[str, object], head: str) -> str:
    """Tables of answers following the passage, memory answers and the change against the prompt."""
    from ..tables import markdown_lines as table

    res, settings = doc["results"], doc["settings"]
    names = [g for g in res]

    def label(g):
        n = res[g][settings[0]]["n"]
        return f"**{g}** (n={n})" if g in (CONFLICT, ALL) else f"{g} (n={n})"

    follow = [[label(g)] + [_with_ci(res[g][s]["follows"], res[g][s]["follows_ci"]) for s in settings] for g in names]
    memory = [[label(g)] + [_with_ci(res[g][s]["memory"], res[g][s]["memory_ci"]) for s in settings]
              for g in names if g not in ("agree", ALL)]
    change = [[label(g)] + [_with_ci(res[g][s]["vs_prompt"], res[g][s]["vs_prompt_ci"], True) for s in settings[2:]]
              for g in names]
    lines = ["## Answers that follow the document", "",
             head + f" Question + \"{doc['instruction']}\"; 95% percentile-bootstrap intervals over items "
             "(1000 resamples, seed 0); n = items per cell.", ""]
    lines += table(["set"] + settings, follow)
    lines += ["", "## Answers that give the memory answer instead (conflicting sets)", ""]
    lines += table(["set"] + settings, memory)
    lines += ["", "## Change against the document in the prompt (points, paired over items)", ""]
    lines += table(["set"] + settings[2:], change)
    scale = res[ALL].get(ADAPTIVE, {}).get("ratio_scale")
    if scale is not None:
        lines += ["", f"Mean adaptive ratio scale (JSD in bits per token): {scale:.3f}."]
    lines += ["", "## Targets (issue 27)", ""]
    for s, t in doc["targets"].items():
        parts = ["never below the prompt on any set: " + ("yes" if t["never_below"] else
                                                            "no (below on " + ", ".join(t["below_on"]) + ")")]
        if "worst_set" in t:
            gain = _with_ci(t["gain_on_worst"], t["gain_ci"], True)
            parts.append(f"on {t['worst_set']} (the prompt's worst set) {gain}"
                         f" points: +15 {'met' if t['plus_15'] else 'not met'}")
        if "agree_change" in t:
            parts.append(f"agree {_with_ci(t['agree_change'], t['agree_ci'], True)} points: "
                         f"{'no loss' if t['no_agree_loss'] else 'a loss'}")
        lines.append(f"- **{s}**: " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def plot(plt, doc: Dict[str, object], path: str) -> None:
    """Grouped bars: the share of answers that follow the passage per set and setting, with intervals."""
    res, settings = doc["results"], doc["settings"]
    groups = list(res)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(groups)), 4))
    width = 0.8 / len(settings)
    for k, s in enumerate(settings):
        xs = [i + (k - (len(settings) - 1) / 2) * width for i in range(len(groups))]
        ys = [res[g][s]["follows"] for g in groups]
        err = [[y - res[g][s]["follows_ci"][0] for g, y in zip(groups, ys)],
               [res[g][s]["follows_ci"][1] - y for g, y in zip(groups, ys)]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=s)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\nn={res[g][settings[0]]['n']}" for g in groups], fontsize=8)
    ax.set_ylim(0, 1.05)
    name = os.path.basename(doc.get("model") or "") or "default model"
    ax.set_title(f"Faithfulness to the document ({name})")
    ax.legend(fontsize=7, ncol=len(settings))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
