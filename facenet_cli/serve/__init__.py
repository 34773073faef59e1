"""`facenet serve`: the real-time web demo and its HTTP API (FastAPI on uvicorn).

    from facenet_cli.serve import Engine, create_app
    app = create_app(Engine("people.gallery"))   # then: uvicorn.run(app, host="127.0.0.1")
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable


def __getattr__(name: str):
    if name == "Engine":
        from .engine import Engine
        return Engine
    if name in ("create_app", "ServeConfig"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'facenet_cli.serve' has no attribute {name!r}")


def page_url(host: str, port: int, token: str | None) -> str:
    import socket

    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()  # a wildcard is no address to open; this machine's name is
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run_server(gallery: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
               token: str | None = None, far: float | None = None, detect_width: int = 320,
               enrol_frames: int = 10, workers: int = 1, device: str = "auto",
               detector: str | None = None, min_face: int | None = None, allowed_hosts: tuple[str, ...] = (),
               on_ready: Callable[..., None] | None = None) -> None:
    """Load the models once, then serve until interrupted. A token is required when bound to
    another address than loopback (the caller generates one). `on_ready(url, csrf)` gets the
    page's URL and the X-Facenet-CSRF value for scripts."""
    import math
    import socket

    import uvicorn

    from ..errors import UsageError
    from .app import ServeConfig, create_app
    from .engine import Engine
    from .hosts import check_allowed_host, is_loopback

    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,200}", token):
        raise UsageError("--token must be 8 to 200 letters, digits or . _ ~ - (it travels in the URL).")
    if not is_loopback(host) and not token:
        raise UsageError(f"Serving on {host} needs a token (--token); only 127.0.0.1 may go without.")
    if far is not None and not (math.isfinite(far) and 0 < far < 1):
        raise UsageError(f"--far is a share of strangers between 0 and 1 (e.g. 0.01 for 1 %), not {far}.")
    allowed_hosts = tuple(check_allowed_host(name) for name in allowed_hosts)
    _limit_threads(workers)
    engine = Engine(gallery, model=model, device=device, far=far, detect_width=detect_width,
                    enrol_frames=enrol_frames, detector=detector, min_face=min_face)
    # Bind first, so that a port in use is one sentence and the URL printed is the real one.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host.") from None
    port = sock.getsockname()[1]
    sock.listen(2048)  # before the URL is printed: a script connecting at once waits in the backlog, not refused
    # The app knows the port it serves: a Host header naming another one is not for this server.
    config = ServeConfig(token=token, workers=workers, host=host, port=port, allowed_hosts=allowed_hosts)
    app = create_app(engine, config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_max_size=config.max_frame_bytes + 1024,
                                           timeout_graceful_shutdown=2))
    if on_ready:
        on_ready(page_url(host, port, token), config.csrf)
    server.run(sockets=[sock])


def _limit_threads(workers: int) -> None:
    """Workers share the cores: PyTorch's intra-op threads per worker so they do not oversubscribe."""
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // max(1, workers)))
