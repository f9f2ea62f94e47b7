"""One definition of the model and generation options, shared by every face.

`PARAMS` maps each GenerationParams field to its CLI flag and its HTTP request field (None where a
face does not offer it); `add_model_flags` / `load_aligner` are the only way subcommands load a model.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any, Dict, Mapping, NamedTuple, Optional

from ..backends.base import KV_CACHE_TYPES
from ..decoding.params import GenerationParams
from ..errors import InvalidParameterError
from ..runtime.spec import DEFAULT_AVOID_RATIO, DEFAULT_RATIO, Avoid, Principle, PrincipleSpec
from .principles import load_file, per_item


class Param(NamedTuple):
    field: str  # GenerationParams field
    flag: Optional[str]  # CLI flag
    http: Optional[str]  # request body field of the server
    type: type
    help: str
    metavar: Optional[str] = None
    many: bool = False  # CLI: repeatable (once for all principles, or once per --principle)


PARAMS = (
    Param("ratio", "--ratio", "alignment_ratio", float,
          "alignment ratio r in z = z_P + r(z_P - z_0); 0 = principle in prompt only; once for all "
          "principles or once per --principle", many=True),
    Param("temperature", "--temperature", "temperature", float, "sampling temperature; 0 = greedy"),
    Param("top_k", "--top-k", "top_k", int, "keep the k most likely aligned tokens (0 = off)"),
    Param("top_p", "--top-p", "top_p", float, "nucleus sampling over aligned logits (1 = off)"),
    Param("min_p", "--min-p", "min_p", float, "drop tokens below min_p x the top probability (0 = off)"),
    Param("repeat_penalty", "--repeat-penalty", "repeat_penalty", float, "llama.cpp repeat penalty (1 = off)"),
    Param("frequency_penalty", "--frequency-penalty", "frequency_penalty", float, "OpenAI frequency penalty (0 = off)"),
    Param("presence_penalty", "--presence-penalty", "presence_penalty", float, "OpenAI presence penalty (0 = off)"),
    Param("seed", "--seed", "seed", int, "random seed (default: random, reported in --json)"),
    Param("max_tokens", "--max-tokens", "max_tokens", int, "maximum tokens to generate"),
    Param("plausibility_top_p", "--plausibility-top-p", "plausibility_top_p", float,
          "nucleus of the principled distribution"),
    Param("plausibility_temperature", "--plausibility-temperature", "plausibility_temperature", float,
          "temperature of that nucleus (default: T, or 1 if T = 0)"),
    Param("plausibility_min_p", "--plausibility-min-p", "plausibility_min_p", float,
          "also drop tokens below this share of the principled top token's probability (0 = off)"),
    Param("top_logprobs", "--top-logprobs", None, int, "alternatives per token in --json logprobs (0..20)"),
    Param("ignore_eos", "--ignore-eos", "ignore_eos", bool, "do not stop at end-of-generation tokens"),
    Param("ratio_guard", "--ratio-guard", "ratio_guard", bool,
          "drop the guidance (r -> 0) while the answer repeats a 4-token phrase of its last 64 tokens"),
    Param("timeout", "--request-timeout", "timeout", float,
          "seconds a request may run (queue included) before it ends with a timeout error", "SECONDS"),
)
HTTP_FIELDS = {p.http: p.field for p in PARAMS if p.http}
_BY_FIELD = {p.field: p for p in PARAMS}
MAX_BRANCHES = 4  # sequences one request may use (Linear Alignment needs 2)
SERVE_REQUEST_TIMEOUT_S = 600.0  # the server's deadline for requests that bring no `timeout`


def _add(p: argparse.ArgumentParser, prm: Param, default: Any = None, shown: Any = None) -> None:
    if prm.type is bool:
        p.add_argument(prm.flag, dest=prm.field, action="store_true", default=None, help=prm.help)
        return
    shown = default if shown is None else shown
    p.add_argument(prm.flag, dest=prm.field, type=prm.type, default=default, metavar=prm.metavar,
                   action="append" if prm.many else "store",
                   help=f"{prm.help} (default: {'none' if shown is None else shown})")


def add_param_flags(p: argparse.ArgumentParser) -> None:
    """The generation flags (every GenerationParams field that the CLI offers, plus --stop)."""
    defaults = GenerationParams()
    for prm in PARAMS:
        _add(p, prm, shown=getattr(defaults, prm.field))
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def add_request_timeout_flag(p: argparse.ArgumentParser, default: Optional[float] = None) -> None:
    """--request-timeout alone, for commands that take no other generation flag (serve, eval)."""
    _add(p, _BY_FIELD["timeout"], default)


class _Given(argparse.Action):
    """Stores the value and records that the flag was given (`args.given`): a KV budget may lower
    what was only a default, never what was asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = frozenset(getattr(namespace, "given", frozenset()) | {self.dest})


def add_max_requests_flag(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--max-requests", type=int, default=default, metavar="N", action=_Given,
                   help="concurrent requests decoded together (default: %(default)s; a --kv-budget may lower "
                        "the default)")


def params_from_args(args: argparse.Namespace) -> GenerationParams:
    """Build the validated parameters object from parsed flags (unset flags keep defaults)."""
    given: Dict[str, Any] = {prm.field: getattr(args, prm.field) for prm in PARAMS
                             if getattr(args, prm.field) is not None}
    for prm in PARAMS:  # a repeated flag's values go to principles_from_args; one value is the field's
        if prm.many and prm.field in given:
            values = given.pop(prm.field)
            if len(values) == 1:
                given[prm.field] = values[0]
    if args.stop:
        given["stop"] = tuple(args.stop)
    return GenerationParams(**given)


def add_principle_flags(p: argparse.ArgumentParser) -> None:
    """--principle (repeatable) and what composes with it; --ratio comes with add_param_flags."""
    p.add_argument("--principle", action="append", default=None, metavar="TEXT",
                   help="the preference in plain words; repeat it to compose several (one branch each)")
    p.add_argument("--weight", type=float, action="append", default=None,
                   help="a principle's weight: once for all or once per --principle (default: equal)")
    p.add_argument("--avoid", action="append", default=None, metavar="TEXT",
                   help="something not wanted (\"Use technical jargon.\"), pushed away from; repeatable")
    p.add_argument("--avoid-ratio", type=float, action="append", default=None,
                   help=f"how hard to push away: once for all or once per --avoid (default: {DEFAULT_AVOID_RATIO:g})")
    p.add_argument("--adaptive-ratio", action="store_true",
                   help="scale the ratio per token by how much principled and plain answers diverge (JSD)")
    p.add_argument("--negative", action="append", default=None, metavar="TEXT",
                   help="what to steer away from, placed as a principle would be (repeatable); with no "
                        "--principle: classifier-free guidance z = z + (g - 1)(z - z_neg)")
    p.add_argument("--negative-prompt-raw", default=None, metavar="TEXT",
                   help="a whole raw negative prompt (TabbyAPI's negative_prompt); no template")
    p.add_argument("--cfg-scale", type=float, default=None, metavar="G",
                   help="guidance scale g in [1, 101] for --negative / --negative-prompt-raw (default: 3; "
                        "1 = none); alone: away from the BOS token, as TabbyAPI")
    p.add_argument("--document", action="append", default=None, metavar="FILE",
                   help="answer from this document (repeatable): context-aware decoding against the same "
                        "prompt with empty documents (the headers alone); with --adaptive-ratio the weight is "
                        "AdaCAD's per-token JSD")
    p.add_argument("--document-ratio", type=float, default=None, metavar="R",
                   help="how hard the documents pull (default: 1)")
    p.add_argument("--principles-file", default=None, metavar="FILE",
                   help="TOML with [[principles]] (text, ratio, weight), [[avoid]] (text, ratio), ratio_schedule")


def principles_from_args(args: argparse.Namespace) -> PrincipleSpec:
    """The checked principle set of --principle, --ratio, --weight, --avoid, --avoid-ratio,
    --adaptive-ratio and --principles-file (errors name the flag)."""
    texts, avoid, ratios = args.principle or [], args.avoid or [], args.ratio or []
    if args.principles_file is not None:
        if texts or avoid or args.weight or args.avoid_ratio:
            raise InvalidParameterError("--principles-file holds the principles and things to avoid: give it "
                                        "without --principle, --weight, --avoid or --avoid-ratio")
        if len(ratios) > 1:
            raise InvalidParameterError("--ratio: with --principles-file give at most one (the default ratio)")
        spec = load_file(args.principles_file, ratios[0] if ratios else DEFAULT_RATIO)
        return with_guidance_flags(replace(spec, adaptive=True) if args.adaptive_ratio else spec, args)
    if not texts:
        if args.weight:
            raise InvalidParameterError("--weight needs at least one --principle")
        if len(ratios) > 1:
            raise InvalidParameterError("--ratio: give it once without --principle")
    if args.avoid_ratio and not avoid:
        raise InvalidParameterError("--avoid-ratio needs at least one --avoid")
    r = per_item("--ratio", ratios, len(texts), "principles", DEFAULT_RATIO)
    w = per_item("--weight", args.weight, len(texts), "principles", 1.0)
    s = per_item("--avoid-ratio", args.avoid_ratio, len(avoid), "avoids", DEFAULT_AVOID_RATIO)
    spec = PrincipleSpec(tuple(map(Principle, texts, r, w)), tuple(map(Avoid, avoid, s)))
    spec = with_guidance_flags(spec, args)
    if args.adaptive_ratio and not spec.guided:
        raise InvalidParameterError("--adaptive-ratio needs a --principle, --avoid, --negative or --document")
    return replace(spec, adaptive=args.adaptive_ratio)


def with_guidance_flags(spec: PrincipleSpec, args: argparse.Namespace) -> PrincipleSpec:
    """--negative, --negative-prompt-raw, --cfg-scale, --document and --document-ratio added to a spec."""
    from dataclasses import replace

    from ..decoding.combination import check_cfg_scale

    negatives, raw = getattr(args, "negative", None) or [], getattr(args, "negative_prompt_raw", None)
    given = getattr(args, "cfg_scale", None)
    scale = DEFAULT_AVOID_RATIO + 1.0 if given is None else given
    try:
        check_cfg_scale(scale)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"--cfg-scale: {exc}") from None
    if negatives:  # each one an avoid branch pushed at (g - 1)
        spec = replace(spec, avoid=spec.avoid + tuple(Avoid(t, scale - 1.0) for t in negatives))
    if raw is not None or (given is not None and not negatives):
        spec = replace(spec, negative_prompt=raw, cfg_scale=scale)
    files = getattr(args, "document", None) or []
    if files or getattr(args, "document_ratio", None) is not None:
        if not files:
            raise InvalidParameterError("--document-ratio needs at least one --document")
        docs = []
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    docs.append(f.read())
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidParameterError(f"--document {path}: cannot read it ({exc})") from None
        ratio = 1.0 if args.document_ratio is None else args.document_ratio
        spec = replace(spec, documents=tuple(docs), document_ratio=ratio)
    return spec


def add_ratio_flag(p: argparse.ArgumentParser) -> None:
    """--ratio alone, for commands that take no other generation flag (serve: the default ratio)."""
    _add(p, _BY_FIELD["ratio"], shown=DEFAULT_RATIO)


def add_preset_flags(p: argparse.ArgumentParser, serve: bool) -> None:
    """--preset, --presets-file and --principle-from (serve also --preset-separator)."""
    from .presets import DEFAULT_SEPARATOR

    if serve:
        p.add_argument("--preset", action="append", default=None, metavar="NAME=TEXT[@RATIO]",
                       help="a principle chosen by model name: requests for MODEL:NAME are aligned to TEXT "
                            "(at RATIO); repeatable")
        p.add_argument("--preset-separator", default=DEFAULT_SEPARATOR, metavar="SEP",
                       help="what joins the model and a preset name in model ids (default: %(default)s)")
    else:
        p.add_argument("--preset", default=None, metavar="NAME[=TEXT[@RATIO]]",
                       help="align to preset NAME of --presets-file (or define it here as NAME=TEXT[@RATIO])")
    p.add_argument("--presets-file", default=None, metavar="FILE",
                   help="TOML with [presets.NAME] tables, each like a --principles-file (principles, avoid, "
                        "ratio_schedule)")
    p.add_argument("--principle-from", choices=("system", "none"), default="none",
                   help="system: the system message is the principle (the principled branch holds it, the "
                        "plain branch does not) when no principle is given (default: %(default)s)")


def presets_from_args(args: argparse.Namespace, default_ratio: float = DEFAULT_RATIO) -> Dict[str, PrincipleSpec]:
    """The presets of --presets-file and --preset NAME=TEXT[@RATIO], by name (errors name the flag)."""
    from .presets import DEFAULT_SEPARATOR, load_presets_file, merge_presets, parse_preset

    sep = getattr(args, "preset_separator", DEFAULT_SEPARATOR)
    from_file = load_presets_file(args.presets_file, default_ratio, sep) if args.presets_file else {}
    if isinstance(args.preset, list):  # serve: each --preset defines one
        given = args.preset
    else:  # chat: --preset NAME picks one, --preset NAME=TEXT defines it
        given = [args.preset] if args.preset and "=" in args.preset else []
    return merge_presets(from_file, *(dict([parse_preset(t, default_ratio, sep)]) for t in given))


def params_from_fields(body: Mapping[str, Any], **fixed) -> GenerationParams:
    """Build GenerationParams from HTTP request fields (the server's names, see PARAMS); None = unset."""
    given = {field: body[http] for http, field in HTTP_FIELDS.items() if body.get(http) is not None}
    given.update({k: v for k, v in fixed.items() if v is not None})
    return GenerationParams(**given)


def add_model_flags(p: argparse.ArgumentParser, n_ctx: int = 4096, kv_budget: Optional[str] = None) -> None:
    """The model flags: the same on every subcommand that loads a model (serve: kv_budget "auto")."""
    p.add_argument("--model", "-m", default=None,
                   help="GGUF file or exported ONNX folder (default: $LA_EDGE_MODEL, else the embedded "
                        "SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--backend", choices=("auto", "llama.cpp", "onnx"), default="auto",
                   help="auto: ONNX for a folder made by `la-edge export onnx`, llama.cpp for a .gguf")
    p.add_argument("--n-ctx", type=int, default=n_ctx, action=_Given,
                   help="context size in tokens of each sequence (default: %(default)s; a --kv-budget may lower "
                        "the default)")
    p.add_argument("--kv-budget", default=kv_budget, metavar="SIZE",
                   help="memory the KV cache may take (1.5GiB, 800MB, or auto: 25%% of the memory available at "
                        "load); lowers requests, then branches, then context to fit (default: %(default)s)")
    p.add_argument("--kv-type", choices=KV_CACHE_TYPES, default="f16",
                   help="KV cache type; q8_0 / q4_0 hold about 2x / 3.5x the cells and turn flash attention on "
                        "(default: %(default)s)")
    p.add_argument("--kv-unified", action="store_true",
                   help="one KV buffer for all sequences (less memory; logits then depend on batch neighbours)")
    p.add_argument("--n-gpu-layers", type=int, default=0,
                   help="layers to offload to a GPU build (CUDA/Metal; 99 = all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--flash-attn", action="store_true", help="enable flash attention")
    p.add_argument("--numpy-sampler", action="store_true", help="use the NumPy reference sampler")
    p.add_argument("--no-prompt-cache", action="store_true",
                   help="prefill every prompt in full (by default finished requests stay in the KV cache and a "
                        "prompt that starts the same way, like a conversation's next turn, reuses them)")
    p.add_argument("--chat-template", default=None, metavar="NAME",
                   help="a llama.cpp built-in chat template (chatml, llama3, gemma, ...; `la-edge doctor --json` "
                        "lists them) instead of the GGUF's own; needed for GGUFs that ship none")
    p.add_argument("--chat-template-file", default=None, metavar="FILE", help="a Jinja chat template file")
    p.add_argument("--max-branches", type=int, default=MAX_BRANCHES, metavar="N",
                   help="KV sequences one request may use (Linear Alignment: 2); the context holds "
                        "max requests x max branches sequences (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp logs")


def load_options(args: argparse.Namespace, **extra: Any) -> Dict[str, Any]:
    """Aligner.load keyword arguments from the model flags, plus `extra` (max_requests, max_queue)."""
    return dict(n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                flash_attn=args.flash_attn, kv_unified=args.kv_unified, prefer_native=not args.numpy_sampler,
                verbose=args.verbose, backend=args.backend, max_branches=args.max_branches,
                chat_template=args.chat_template, chat_template_file=args.chat_template_file,
                prompt_cache=not args.no_prompt_cache, kv_budget=args.kv_budget, kv_type=args.kv_type,
                fixed=tuple(sorted(getattr(args, "given", ()))), **extra)


def load_aligner(args: argparse.Namespace, **extra: Any):
    """The Aligner for a subcommand's model flags; `extra` as in load_options."""
    from ..runtime.aligner import Aligner

    return Aligner.load(args.model, **load_options(args, **extra))
