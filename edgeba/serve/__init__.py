"""`edgeba serve`: the clinic web page (needs the [serve] extra: Starlette, uvicorn, python-multipart).

Everything the page needs ships in edgeba/serve/static (no CDN, no build step), so it works offline.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import uvicorn

from edgeba.errors import EdgebaError
from edgeba.serve.app import DEFAULT_MAX_UPLOAD, create_app

__all__ = ["create_app", "serve", "DEFAULT_MAX_UPLOAD"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so a busy port or a bad address is one clear error."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)  # from now on connections queue up, so the printed URL works at once
    except OSError as exc:
        raise EdgebaError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(sock: socket.socket, predictor, model_dir: str | Path | None = None, max_upload: int = DEFAULT_MAX_UPLOAD) -> None:
    """Serve until interrupted. No access log: request lines would put patients' file names in it."""
    app = create_app(predictor, model_dir, max_upload)
    config = uvicorn.Config(app, access_log=False, log_level="warning", limit_concurrency=64, timeout_keep_alive=5)
    # python-multipart logs each malformed body it meets; the client already gets a 400 saying so.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled: for a server that is the normal stop
        pass
