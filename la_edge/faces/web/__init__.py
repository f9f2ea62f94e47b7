"""The chat page of `la-edge serve`: three static files beside this module, served at `/` and `/web/{asset}`.

The page talks only to the server's own `/v1/chat/completions` (streaming). Only the names in
ASSETS are served, so no path from the request ever reaches the file system.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.exceptions import HTTPException

__all__ = ["ASSETS", "mount_web"]

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Defence in depth: the page builds every node from text, and the browser would refuse inline
# scripts, inline event handlers and foreign origins even if it did not.
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_web(app: FastAPI) -> None:
    """Add `GET /` (the chat page) and `GET /web/{asset}` to `app`. Call once, before serving."""
    files = {name: resources.files(__name__).joinpath(name).read_bytes() for name in ASSETS}

    def send(name: str) -> Response:
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return send("index.html")

    @app.get("/web/{asset}", include_in_schema=False)
    async def asset(asset: str) -> Response:
        if asset not in files:
            raise HTTPException(404, f"no web asset named {asset[:64]!r}")
        return send(asset)
