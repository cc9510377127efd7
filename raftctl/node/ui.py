"""GET /ui: the web dashboard, static files shipped in the package (raftctl/node/ui/).

The shell (HTML, JS, CSS) is public and carries no data; the page asks for a token, keeps it in
sessionStorage and calls the API with it as a Bearer token, so every figure it shows passes the API's
own authorization. Only the files below are served; a strict Content-Security-Policy keeps scripts to
the shipped app.js.
"""
from __future__ import annotations

from importlib import resources

from aiohttp import web

from raftctl.node.http import routes

FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("raftctl.node").joinpath("ui", name).read_bytes()


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def index(request: web.Request) -> web.Response:
    return _serve("index.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in FILES:
        raise web.HTTPNotFound()
    return _serve(name)


def _serve(name: str) -> web.Response:
    return web.Response(body=_read(name), content_type=FILES[name], charset="utf-8", headers=HEADERS)


def add_routes(app: web.Application) -> None:
    r = routes(app)
    r.add_get("/ui", redirect)
    r.add_get("/ui/", index)
    r.add_get("/ui/{file}", static)
