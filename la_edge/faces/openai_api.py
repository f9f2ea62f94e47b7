"""OpenAI's API on the server's port: /v1/models, /v1/chat/completions, /v1/completions.

Alignment fields are request extensions: `principle`, `alignment_ratio`, `plausibility_top_p`,
`plausibility_temperature`, `plausibility_min_p` (plus `top_k`, `min_p`, `repeat_penalty`, `ignore_eos`),
and for several principles `principles`, `avoid`, `ratio_schedule` (faces/principles.py), and
`principle_from`, usable via `extra_body`. A request that names no principle gets one from the
`Steering` (faces/presets.py): the system message, the preset its `model` names (`MODEL:NAME`), or
the server's default. openai_schema.py reads the requests, the gateway runs them and openai_wire.py
writes the answers.
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request

from .gateway import Gateway
from .openai_schema import ChatRequest, CompletionRequest, validate
from .openai_wire import Wire, error_response

__all__ = ["mount_openai"]


def mount_openai(app: FastAPI, gateway: Gateway) -> None:
    """Add OpenAI's endpoints to `app`, answering through `gateway`; its error shape is the server's default."""
    steering = gateway.steering
    gateway.face("/v1/", error_response)

    async def handle(http: Request, model_cls, chat: bool):
        try:
            gateway.check_alive()
            req = validate(await gateway.body(http), model_cls)
            request = await gateway.start(req)
        except Exception as exc:
            return gateway.failed(http, exc)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        # the model an answer names: the requested one when it is one of ours (a preset), else the model
        model = req.model if req.model in steering.ids() else steering.model
        wire = Wire(gateway.token_bytes, {"id": rid, "created": int(time.time()), "model": model}, chat,
                    req.want_logprobs, req.include_usage)
        return await gateway.answer(http, request, wire, req.stream)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "la_edge"} for name in steering.ids()]}

    @app.post("/v1/chat/completions")
    async def chat(http: Request):
        return await handle(http, ChatRequest, chat=True)

    @app.post("/v1/completions")
    async def completions(http: Request):
        return await handle(http, CompletionRequest, chat=False)
