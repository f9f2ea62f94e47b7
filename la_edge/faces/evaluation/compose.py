"""`la-edge eval --compose`: several principles at once, and a word to avoid, per setting.

Combination tasks score each part (principle) of an answer with its own checker, for plain
decoding, all parts joined in one sentence (r = 0 and r = R), composed (one branch per part) at
r = R and composed with the adaptive ratio. Avoid tasks count the forbidden word for plain
decoding, a "do not use X" principle (r = 0 and r = R) and `avoid` ("use X", subtracted).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from ...decoding.params import GenerationParams
from . import checkers
from .runner import EvalConfig, Progress, _fill, _load_json, _mean, ci, run_all, setting_name

ROUND = 4


@dataclass(frozen=True)
class Part:
    """One principle of a combination: its id, text and checker spec."""

    id: str
    principle: str
    checker: Dict[str, object]


@dataclass(frozen=True)
class ComposeTask:
    """One prompt under several parts."""

    combination: str
    parts: Tuple[Part, ...]
    prompt: str
    source: str

    @property
    def joined(self) -> str:
        """All parts in one principle text, as a user would write them."""
        return " ".join(p.principle for p in self.parts)


@dataclass(frozen=True)
class AvoidTask:
    """One prompt with forbidden words: the 'do not' principle and the text to subtract."""

    say: str
    avoid: str
    prompt: str
    source: str
    words: Tuple[str, ...]


def compose_settings(ratios: Sequence[float], guard: bool = False) -> List[str]:
    """plain, joined r=0, then per ratio R: joined r=R, composed r=R, composed r=R undivided (each
    of n parts pushes with R, not R/n: ratios n R), composed r=R adaptive (and with guard: joined
    r=R guard, composed r=R guard)."""
    out = ["plain", "joined r=0"]
    for r in ratios:
        if r != 0.0:
            name = setting_name(r)
            out += [f"joined {name}", f"composed {name}", f"composed {name} undivided", f"composed {name} adaptive"]
            out += [f"joined {name} guard", f"composed {name} guard"] if guard else []
    return out


def avoid_settings(ratios: Sequence[float], wide: bool = False) -> List[str]:
    """plain, say r=0, then per ratio R: say r=R (Linear Alignment), avoid s=R (say r=0 + avoid) and
    negative g=1+R (no principle: the avoid text as a negative prompt, `--negative` at cfg_scale 1+R);
    with `wide` also negative g=1+R top-p 1 (the nucleus is the whole vocabulary, as exllamav2's CFG)."""
    out = ["plain", "say r=0"]
    for r in ratios:
        if r != 0.0:
            out += [f"say {setting_name(r)}", f"avoid s={r:g}", f"negative g={1 + r:g}"]
            out += [f"negative g={1 + r:g} top-p 1"] if wide else []
    return out


def _parts() -> Dict[str, Part]:
    known = {p["id"]: Part(p["id"], p["principle"], dict(p["checker"]))
             for p in _load_json("principles.json")["principles"]}
    for pid, p in _load_json("compose.json")["parts"].items():
        known[pid] = Part(pid, p["principle"], dict(p["checker"]))
    return known


def load_compose_tasks(limit: Optional[int] = None) -> List[ComposeTask]:
    """The packaged combination tasks, `limit` prompts per combination."""
    known = _parts()
    tasks = []
    for c in _load_json("compose.json")["combinations"]:
        parts = tuple(known[p] for p in c["parts"])
        tasks += [ComposeTask(c["id"], parts, x["prompt"], x["source"]) for x in c["prompts"][:limit]]
    return tasks


def load_avoid_tasks(limit: Optional[int] = None) -> List[AvoidTask]:
    """The packaged avoid tasks: the avoid_keywords prompts of principles.json with their words."""
    spec = _compose_avoid_spec()
    source = next(p for p in _load_json("principles.json")["principles"] if p["id"] == spec["prompts_from"])
    out = []
    for x in source["prompts"][:limit]:
        args = x["args"]
        out.append(AvoidTask(_fill(spec["say"], args), _fill(spec["avoid"], args), x["prompt"], x["source"],
                             tuple(args["forbidden_words"])))
    return out


def load_avoid_set(limit: Optional[int] = None) -> List[AvoidTask]:
    """`eval --forbidden-words`: the eight avoid tasks, IFEval's forbidden-word prompts whose
    instructions split off cleanly (the task alone), and la-edge's own (data/avoid.json);
    `limit` of them evenly spaced."""
    from . import ifeval

    spec = _compose_avoid_spec()
    found = [(t.prompt, t.source, t.words) for t in load_avoid_tasks()]
    found += [(item.task, f"ifeval:{item.key}", tuple(kw["forbidden_words"])) for item in ifeval.load_items()[0]
              for iid, kw in zip(item.instruction_id_list, item.kwargs) if iid == "keywords:forbidden_words"]
    found += [(x["prompt"], x["source"], tuple(x["forbidden_words"])) for x in _load_json("avoid.json")["items"]]
    tasks, seen = [], set()
    for prompt, source, words in found:  # the first copy of a prompt or an IFEval key (the eight are IFEval's)
        if prompt not in seen and source not in seen:
            seen.update((prompt, source))
            args = {"forbidden_words": list(words)}
            tasks.append(AvoidTask(_fill(spec["say"], args), _fill(spec["avoid"], args), prompt, source, words))
    if limit is not None and limit < len(tasks):
        tasks = [tasks[int(i * len(tasks) / limit)] for i in range(limit)]
    return tasks


def _compose_avoid_spec() -> Dict[str, str]:
    return _load_json("compose.json")["avoid"]


def _ratio(setting: str) -> float:
    return float(setting.split("=")[1].split()[0])


def _compose_where(la, task: ComposeTask, setting: str) -> Dict[str, object]:
    """answer() keywords of one setting: the prompt alone, one principle (K <= 2) or a branch set."""
    if setting == "plain":
        return {"prompt": task.prompt}
    guard = {"guard": True} if setting.endswith(" guard") else {}
    if setting.startswith("joined"):
        return {"ratio": _ratio(setting), "prompt": task.prompt, "principle": task.joined, **guard}
    ratio = _ratio(setting) * (len(task.parts) if setting.endswith(" undivided") else 1)
    return {"branches": la.branches(task.prompt, [p.principle for p in task.parts], ratios=ratio,
                                    adaptive=setting.endswith("adaptive")), **guard}


def _avoid_where(la, task: AvoidTask, setting: str) -> Dict[str, object]:
    if setting == "plain":
        return {"prompt": task.prompt}
    if setting.startswith("say"):
        return {"ratio": _ratio(setting), "prompt": task.prompt, "principle": task.say}
    if setting.startswith("negative"):
        wide = {"top_p": 1.0} if setting.endswith("top-p 1") else {}
        return {"branches": la.negative(task.prompt, negative=task.avoid, cfg_scale=_ratio(setting)), **wide}
    return {"branches": la.branches(task.prompt, [task.say], ratios=0.0, avoid=[task.avoid],
                                    avoid_ratios=_ratio(setting))}


def job(config: EvalConfig, ratio: float = 0.0, guard: bool = False, top_p: Optional[float] = None,
        **where) -> Dict[str, object]:
    """Aligner.submit keywords of one answer; `where`: prompt/principle, messages or branches;
    top_p: the plausibility nucleus (None: GenerationParams' default)."""
    wide = {} if top_p is None else {"plausibility_top_p": top_p}
    params = GenerationParams(ratio=ratio, temperature=config.temperature, seed=config.seed,
                              max_tokens=config.max_tokens, timeout=config.timeout, ratio_guard=guard, **wide)
    return dict(params=params, **where)


def answer(la, config: EvalConfig, ratio: float = 0.0, guard: bool = False, **where) -> Dict[str, object]:
    """One answer (greedy or seeded): see collect()."""
    return collect(la.submit(**job(config, ratio, guard, **where)))


def collect(request) -> Dict[str, object]:
    """A submitted answer's text, finish reason, branch count, prompt tokens, mean ratio scale and
    fluency figures."""
    scales = [chunk.ratio_scale for chunk in request.stream()]
    res = request.result()
    ratio = res.prompts.get("plain") is not None and request.params.ratio
    k = len(res.prompts.get("branches") or ()) or (2 if ratio else 1)
    return {"text": res.text, "finish_reason": res.finish_reason, "branches": k,
            "prompt_tokens": res.usage["prompt_tokens"], "cached_tokens": res.usage["cached_tokens"],
            "ratio_scale": round(_mean(scales), ROUND) if scales else 1.0, "fluency": checkers.fluency(res.text)}


def _fluency(rows: List[Dict[str, object]]) -> Dict[str, float]:
    out = {key: round(_mean([r["fluency"][key] for r in rows]), ROUND)
           for key in ("distinct_1", "distinct_2", "rep_4", "words")}
    out["ratio_scale"] = round(_mean([r["ratio_scale"] for r in rows]), ROUND)
    return out


def run_compose(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr, model: str = "") -> Dict[str, object]:
    """Per-part adherence of the combination tasks and the forbidden-word rate of the avoid tasks."""
    config.validate()
    tasks, avoid = load_compose_tasks(config.limit), load_avoid_tasks(config.limit)
    if checkers.uses([p.checker for t in tasks for p in t.parts], "language"):
        checkers.require_langdetect()
    settings, asettings = compose_settings(config.ratios, config.guard), avoid_settings(config.ratios)
    bar = Progress(len(tasks) * len(settings) + len(avoid) * len(asettings), progress)
    cells = [(t, s) for t in tasks for s in settings] + [(t, s) for t in avoid for s in asettings]
    jobs = [job(config, **(_compose_where if isinstance(t, ComposeTask) else _avoid_where)(la, t, s))
            for t, s in cells]
    rows = run_all(la, jobs, config.parallel, lambda i, _: bar.step(cells[i][1]), collect)
    samples, avoid_samples = [], []
    for (t, s), row in zip(cells, rows):
        if isinstance(t, ComposeTask):
            finished = row["finish_reason"] == "stop"
            row.update(combination=t.combination, source=t.source, setting=s,
                       passed={p.id: checkers.check(row["text"], p.checker, finished=finished) for p in t.parts})
            samples.append(row)
        else:
            avoid_samples.append(score_avoid(row, t, s))
    return {"mode": "compose", "model": model, "config": asdict(config), "settings": settings,
            "avoid_settings": asettings, "results": _compose_results(tasks, settings, samples),
            "avoid": _avoid_results(asettings, avoid_samples),
            "samples": samples, "avoid_samples": avoid_samples}


def score_avoid(row: Dict[str, object], task: AvoidTask, setting: str) -> Dict[str, object]:
    """Add to a collected answer its setting, source and words, whether it used one and how often."""
    hits = sum(len([w for w in checkers.words(row["text"]) if w.lower() == f.lower()]) for f in task.words)
    row.update(source=task.source, setting=setting, words=list(task.words), used=hits > 0, count=hits)
    return row


def run_avoid(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr, model: str = "") -> Dict[str, object]:
    """`eval --forbidden-words`: the forbidden-word rate per avoid setting on the larger avoid set,
    with each setting's paired change against plain decoding."""
    config.validate()
    tasks, settings = load_avoid_set(config.limit), avoid_settings(config.ratios, wide=True)
    bar = Progress(len(tasks) * len(settings), progress)
    cells = [(t, s) for t in tasks for s in settings]
    rows = run_all(la, [job(config, **_avoid_where(la, t, s)) for t, s in cells], config.parallel,
                   lambda i, _: bar.step(cells[i][1]), collect)
    samples = [score_avoid(row, t, s) for (t, s), row in zip(cells, rows)]
    res = avoid_summary(settings, samples)
    sources = {"ifeval": sum(t.source.startswith("ifeval") for t in tasks),
               "la_edge": sum(t.source.startswith("la_edge") for t in tasks)}
    return {"mode": "avoid", "model": model, "config": asdict(config), "settings": settings,
            "avoid_settings": settings, "avoid": res, "sources": sources, "samples": samples}


def avoid_summary(settings: List[str], samples: List[Dict[str, object]]) -> Dict[str, object]:
    """The forbidden-word rate per setting with intervals, each setting's paired change against
    plain (per prompt, by source) and what is left of the prompts plain used a word in."""
    res = _avoid_results(settings, samples)
    used = {(x["source"], x["setting"]): float(x["used"]) for x in samples}
    sources = [x["source"] for x in samples if x["setting"] == "plain"]
    res["vs_plain"] = {s: ci([used[src, s] - used[src, "plain"] for src in sources])
                       for s in settings if s != "plain"}
    users = [src for src in sources if used[src, "plain"]]  # None below: plain used no word
    res["plain_users"] = {s: round(_mean([used[src, s] for src in users]), ROUND) if users else None
                          for s in settings}
    res["plain_users_n"] = len(users)
    return res


def _compose_results(tasks: List[ComposeTask], settings: List[str], samples) -> Dict[str, object]:
    """Adherence per (combination, part) and setting, their mean, all-parts rate and fluency."""
    cells: Dict[str, Dict[str, float]] = {}
    for combo in dict.fromkeys(t.combination for t in tasks):
        parts = next(t.parts for t in tasks if t.combination == combo)
        for p in parts:
            cells[f"{combo}: {p.id}"] = {s: round(_mean([float(x["passed"][p.id]) for x in samples
                                                         if x["combination"] == combo and x["setting"] == s]), ROUND)
                                         for s in settings}
    by = {s: [x for x in samples if x["setting"] == s] for s in settings}
    return {"parts": cells,
            "mean": {s: round(_mean([c[s] for c in cells.values()]), ROUND) for s in settings},
            "all_parts": {s: round(_mean([float(all(x["passed"].values())) for x in by[s]]), ROUND) for s in settings},
            "mean_ci": {s: _cells_mean_ci(by[s], list(cells)) for s in settings},
            "all_parts_ci": {s: ci([float(all(x["passed"].values())) for x in by[s]]) for s in settings},
            "fluency": {s: _fluency(by[s]) for s in settings}, "n": len(by[settings[0]])}


def _cells_mean_ci(rows, cells: List[str], n: int = 1000, seed: int = 0) -> List[float]:
    """95% bootstrap interval of the mean per part (answers resampled, each cell's mean recomputed)."""
    if not rows:
        return [0.0, 0.0]
    m = np.array([[float(r["passed"][c.split(": ")[1]]) if r["combination"] == c.split(": ")[0] else np.nan
                   for c in cells] for r in rows])
    draws = m[np.random.default_rng(seed).integers(0, len(rows), size=(n, len(rows)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cell that no resampled answer has
        means = np.nanmean(np.nanmean(draws, axis=1), axis=1)
    lo, hi = np.nanpercentile(means, [2.5, 97.5])
    return [round(float(lo), ROUND), round(float(hi), ROUND)]


def _avoid_results(settings: List[str], samples) -> Dict[str, object]:
    by = {s: [x for x in samples if x["setting"] == s] for s in settings}
    return {"rate": {s: round(_mean([float(x["used"]) for x in by[s]]), ROUND) for s in settings},
            "rate_ci": {s: ci([float(x["used"]) for x in by[s]]) for s in settings},
            "count": {s: round(_mean([float(x["count"]) for x in by[s]]), ROUND) for s in settings},
            "fluency": {s: _fluency(by[s]) for s in settings}, "n": len(by[settings[0]])}
