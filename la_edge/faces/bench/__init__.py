"""`la-edge bench`: decode speed (decode), host time per step (profile), backend scaling (scaling),
long contexts (context), chat turns (chat), peak memory (memory), the sampler alone (sampler) and
serving over HTTP (server).

Each module measures one thing and renders it with faces.tables; cli.py holds the flags. Nothing
here imports numpy before llama.cpp is loaded (see README, "GPU").
"""

from .cli import add_bench_parser

__all__ = ["add_bench_parser"]
