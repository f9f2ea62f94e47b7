"""Run the principle-adherence and personal-preference evaluations on a loaded Aligner."""

from __future__ import annotations

import collections
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from ...errors import InvalidParameterError
from ...decoding.params import GenerationParams
from . import checkers

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LETTERS = "ABCD"
MC_INSTRUCTION = "Answer with the letter of the best option only."


@dataclass
class EvalConfig:
    """What to run: settings are plain, r=0 and each ratio; greedy unless temperature > 0."""

    ratios: Tuple[float, ...] = (1.0, 2.0, 4.0)
    max_tokens: int = 64
    limit: Optional[int] = None
    seed: int = 0
    temperature: float = 0.0
    principles: Optional[Tuple[str, ...]] = None
    timeout: Optional[float] = None  # seconds per answer (None: no deadline)
    adaptive: bool = False  # also run each ratio with the adaptive (per-token) ratio
    parallel: int = 1  # answers decoded together in one batch (load the Aligner with max_requests >= this)
    guard: bool = False  # also run each ratio with the ratio guard (GenerationParams.ratio_guard)

    def settings(self) -> List[str]:
        """Setting names in order: 'plain', 'r=0', then 'r=<ratio>' (and its 'adaptive' and 'guard')."""
        out = ["plain", "r=0"]
        for r in self.ratios:
            if r != 0.0:
                out += [setting_name(r)] + ([f"{setting_name(r)} adaptive"] if self.adaptive else []) \
                    + ([f"{setting_name(r)} guard"] if self.guard else [])
        return out

    def validate(self) -> None:
        """Raise InvalidParameterError now, before any model is loaded, for a bad ratio or limit."""
        if self.limit is not None and self.limit < 1:
            raise InvalidParameterError(f"limit must be >= 1, got {self.limit}")
        if not isinstance(self.parallel, int) or self.parallel < 1:
            raise InvalidParameterError(f"parallel must be a positive integer, got {self.parallel!r}")
        for s in self.settings():
            _params(self, s)


@dataclass
class Task:
    """One prompt under one principle, with its checker spec."""

    principle_id: str
    principle: str
    prompt: str
    source: str
    checker: Dict[str, object] = field(default_factory=dict)


def setting_name(ratio: float) -> str:
    """'r=2' for 2.0, 'r=0.5' for 0.5."""
    return f"r={ratio:g}"


def _ratio_of(setting: str) -> Optional[float]:
    return None if setting == "plain" else float(setting[2:].split()[0])


def _load_json(name: str) -> Dict[str, object]:
    with open(os.path.join(DATA_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def _fill(template: str, args: Dict[str, object]) -> str:
    shown = {k: ", ".join(f"'{w}'" for w in v) if isinstance(v, list) else v for k, v in args.items()}
    return template.format(**shown)


def load_tasks(limit: Optional[int] = None, only: Optional[Sequence[str]] = None) -> List[Task]:
    """The packaged principle prompts, `limit` per principle, optionally only some principle ids."""
    principles = _load_json("principles.json")["principles"]
    known = [p["id"] for p in principles]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise InvalidParameterError(f"unknown principle(s) {', '.join(unknown)}; known: {', '.join(known)}")
    tasks = []
    for p in principles:
        if only and p["id"] not in only:
            continue
        for item in p["prompts"][:limit]:
            args = item.get("args", {})
            tasks.append(Task(p["id"], _fill(p["principle"], args), item["prompt"], item["source"],
                              {**p["checker"], **args}))
    return tasks


def load_preferences(limit: Optional[int] = None) -> List[Dict[str, object]]:
    """The packaged personal-preference multiple-choice items."""
    return _load_json("preferences.json")["items"][:limit]


class Progress:
    """A minimal progress bar on stderr."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, width: int = 30):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream

    def step(self, label: str = "") -> None:
        self.done += 1
        if self.stream is None:
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[:40]:<40}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _params(config: EvalConfig, setting: str, **extra) -> GenerationParams:
    ratio = _ratio_of(setting)
    return GenerationParams(ratio=ratio or 0.0, temperature=config.temperature, seed=config.seed,
                            max_tokens=config.max_tokens, timeout=config.timeout,
                            ratio_guard=setting.endswith(" guard"), **extra)


def _pair(la, prompt: str, principle: str, setting: str):
    return la.prompts(prompt, None if setting == "plain" else principle)


def _prompts(la, prompt: str, principle: str, setting: str) -> Dict[str, object]:
    """submit() keywords of one setting: a prompt pair, or a branch set for the adaptive ratio."""
    if setting.endswith(" adaptive"):
        return {"branches": la.branches(prompt, [principle], ratios=_ratio_of(setting), adaptive=True)}
    return {"pair": _pair(la, prompt, principle, setting)}


def run_all(la, jobs: Sequence[Dict[str, object]], parallel: int = 1,
            done: Optional[Callable[[int, object], None]] = None,
            collect: Callable[[object], object] = lambda req: req.result()) -> List[object]:
    """collect(submit(**job)) for each job (default: its result), `parallel` at a time, in job order.

    The engine decodes the requests in flight together, one batch per step (greedy answers may
    differ from one-at-a-time decoding only by batched float rounding)."""
    running = getattr(getattr(getattr(la, "engine", None), "scheduler", None), "max_requests", parallel)
    parallel = max(1, min(parallel, running))  # a KV budget may have lowered max_requests
    results: List[object] = [None] * len(jobs)
    flight: "collections.deque" = collections.deque()
    try:
        for i, job in enumerate(jobs):
            flight.append((i, la.submit(**job)))
            while len(flight) >= parallel or (i == len(jobs) - 1 and flight):
                j, req = flight.popleft()
                results[j] = collect(req)
                if done:
                    done(j, results[j])
    finally:
        for _, req in flight:
            req.cancel()
    return results


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ci(values: Sequence[float]) -> List[float]:
    """The 95% bootstrap interval of the mean (stats.bootstrap_ci); [0, 0] for no values."""
    from .stats import bootstrap_ci

    return [round(x, 4) for x in bootstrap_ci(values)] if len(values) else [0.0, 0.0]


def _summary(rows: List[Dict[str, object]]) -> Dict[str, float]:
    passed = [float(r["passed"]) for r in rows]
    out = {"adherence": _mean(passed), "adherence_ci": ci(passed), "passed": sum(r["passed"] for r in rows),
           "n": len(rows)}
    for key in ("distinct_1", "distinct_2", "rep_4", "words"):
        out[key] = _mean([r["fluency"][key] for r in rows])
    return out


def run_principles(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr,
                   model: str = "") -> Dict[str, object]:
    """Adherence and fluency per principle and setting; returns the results document."""
    config.validate()
    tasks = load_tasks(config.limit, config.principles)
    if checkers.uses([t.checker for t in tasks], "language"):
        checkers.require_langdetect()
    settings = config.settings()
    bar = Progress(len(tasks) * len(settings), progress)
    cells = [(t, s) for t in tasks for s in settings]
    answers = run_all(la, [dict(params=_params(config, s), **_prompts(la, t.prompt, t.principle, s))
                           for t, s in cells], config.parallel,
                      lambda i, _: bar.step(f"{cells[i][0].principle_id} {cells[i][1]}"))
    samples = []
    for (t, s), res in zip(cells, answers):
        passed = checkers.check(res.text, t.checker, finished=res.finish_reason == "stop")
        samples.append({"principle": t.principle_id, "source": t.source, "setting": s, "text": res.text,
                        "finish_reason": res.finish_reason, "passed": passed,
                        "fluency": checkers.fluency(res.text)})
    ids = list(dict.fromkeys(t.principle_id for t in tasks))
    results = {pid: {s: _summary([x for x in samples if x["principle"] == pid and x["setting"] == s])
                     for s in settings} for pid in ids}
    principles = {pid: {"principle": next(t.principle for t in tasks if t.principle_id == pid),
                        "checker": next(t.checker["type"] for t in tasks if t.principle_id == pid)} for pid in ids}
    return {"mode": "principles", "model": model, "config": asdict(config), "settings": settings,
            "principles": principles, "results": results,
            "overall": {s: _summary([x for x in samples if x["setting"] == s]) for s in settings},
            "samples": samples}


def mc_prompt(item: Dict[str, object]) -> str:
    """The question with its options rendered as 'A. ...' lines and the letter instruction."""
    options = "\n".join(f"{k}. {v}" for k, v in item["options"].items())
    return f"{item['question']}\n\n{options}\n\n{MC_INSTRUCTION}"


def letter_scores(top: Sequence[Dict[str, object]], letters: str = LETTERS) -> Dict[str, float]:
    """Probability of each letter among the first token's alternatives (' A', 'A', 'A.' ... summed)."""
    scores: Dict[str, float] = {}
    for alt in top:
        key = str(alt["text"]).strip().rstrip(".):")
        if key in letters and len(key) == 1 and alt["logprob"] is not None:
            scores[key] = scores.get(key, 0.0) + math.exp(float(alt["logprob"]))
    return scores


def run_mc(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr, model: str = "") -> Dict[str, object]:
    """Accuracy of the aligned first-token distribution over the option letters, per setting."""
    config.validate()
    items = load_preferences(config.limit)
    settings = config.settings()
    bar = Progress(len(items) * len(settings), progress)
    samples = []
    for item in items:
        for s in settings:
            params = _params(config, s, plausibility_top_p=1.0, top_logprobs=20).with_(max_tokens=1)
            res = la.generate(params=params, **_prompts(la, mc_prompt(item), item["preference"], s))
            scores = letter_scores(res.logprobs[0]["top"] if res.logprobs else [])
            choice = max(sorted(scores), key=scores.get) if scores else None
            samples.append({"item": item["id"], "setting": s, "choice": choice, "answer": item["answer"],
                            "correct": choice == item["answer"], "letter_mass": sum(scores.values()),
                            "answer_prob": scores.get(item["answer"], 0.0) / (sum(scores.values()) or 1.0),
                            "scores": scores})
            bar.step(f"{item['id']} {s}")
    results = {}
    for s in settings:
        rows = [x for x in samples if x["setting"] == s]
        results[s] = {"accuracy": _mean([float(r["correct"]) for r in rows]),
                      "correct": sum(r["correct"] for r in rows), "n": len(rows),
                      "answered": _mean([float(r["choice"] is not None) for r in rows]),
                      "letter_mass": _mean([r["letter_mass"] for r in rows]),
                      "answer_prob": _mean([r["answer_prob"] for r in rows])}
    return {"mode": "mc", "model": model, "config": asdict(config), "settings": settings,
            "results": results, "samples": samples}

