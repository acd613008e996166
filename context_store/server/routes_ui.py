"""The web console at ``/ui`` (docs/console.md) and the serving series it charts (``/v1/status/serving``).

The console is static HTML/CSS/ES modules shipped in the package (``server/ui/``): no build step, nothing
fetched from another host. The page needs no key; every API call it makes carries the key the user typed
(``Authorization: Bearer``), so it sees exactly what that key may see.

Assets are served under ``/ui/static/<version>/``, ``version`` being a hash of their contents: they are
cached for a year (``immutable``) and an upgrade changes the URL. ``/ui`` itself is ``no-cache``. Every
response carries a strict Content-Security-Policy (this origin only, no inline script or style).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import NotFoundError
from .auth import authorize
from .errors import json_response
from .params import KNOWN_QUERY_PARAMS
from .serving_stats import ServingSeries
from .state import ServerState

__all__ = ["ui_router", "serving_status_router", "CSP", "UiAssets"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class UiAssets:
    """The console's files, read once from the package (a few tens of KB)."""

    files: dict[str, bytes]
    version: str

    @classmethod
    def load(cls) -> UiAssets:
        root = resources.files("context_store.server") / "ui"
        files: dict[str, bytes] = {}

        def walk(node: object, prefix: str) -> None:
            for child in node.iterdir():  # type: ignore[attr-defined]
                name = prefix + child.name
                if child.is_dir():
                    walk(child, name + "/")
                elif any(name.endswith(ext) for ext in _TYPES):
                    files[name] = child.read_bytes()

        walk(root, "")
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        return cls(files, digest.hexdigest()[:12])

    def index(self) -> bytes:
        return self.files["index.html"].replace(b"{{VERSION}}", self.version.encode())


def _content_type(name: str) -> str:
    return next(t for ext, t in _TYPES.items() if name.endswith(ext))


def ui_router(assets: UiAssets | None = None) -> APIRouter:
    assets = assets or UiAssets.load()
    router = APIRouter(include_in_schema=False)
    index = assets.index()

    @router.get("/ui")
    async def console() -> Response:
        headers = {**_SECURITY, "Cache-Control": "no-cache"}
        return Response(index, media_type=_content_type("index.html"), headers=headers)

    @router.get("/ui/")
    async def console_slash() -> Response:
        return RedirectResponse("/ui", status_code=308)

    @router.get("/ui/static/{version}/{path:path}")
    async def static(version: str, path: str) -> Response:
        body = assets.files.get(path)
        if body is None or path == "index.html" or version != assets.version:
            raise NotFoundError(f"no console asset {path!r} (version {version!r})", field="path")
        headers = {**_SECURITY, "Cache-Control": "public, max-age=31536000, immutable"}
        return Response(body, media_type=_content_type(path), headers=headers)

    return router


def serving_status_router(state: ServerState, series: ServingSeries) -> APIRouter:
    router = APIRouter(prefix="/v1/status", tags=["status"], dependencies=[KNOWN_QUERY_PARAMS])

    @router.get("/serving", summary="Requests per second and p50/p99 latency over the last minutes (this process)")
    async def serving(request: Request) -> Response:
        authorize(state.authenticate(request), "read", None)  # any key that may read (no store is opened)
        return json_response(series.snapshot())

    return router
