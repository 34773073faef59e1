"""`facenet serve [GALLERY]`: the real-time web demo (camera in the browser, names from the gallery)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import DefaultDetector, Device
from ._app import DetectorOption, DeviceOption, MinFaceOption, command, console, err_console

DEFAULT_GALLERY = Path("people.gallery")


@command
def serve_command(
    gallery: Annotated[str, typer.Argument(  # text, not a Path, which would fold the `//` of a postgresql:// URL
        help="The gallery: a file (created when missing; `facenet gallery add` and `facenet identify` use the same "
        "file) or a URL, e.g. postgresql://user@host/db?gallery=people.", metavar="GALLERY")] = str(DEFAULT_GALLERY),
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. 127.0.0.1 (the default) is this machine only; any other address "
        "requires a token on every request.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="A catalogue name or checkpoint; must be the gallery's own model (the default), or any "
        "model for a new gallery (default dlib-resnet.v1).", show_default=False)] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", help="Require this token on every request and socket (generated when --host is not a "
        "loopback address and none is given).", show_default=False)] = None,
    far: Annotated[Optional[float], typer.Option(
        "--far", help="The share of strangers accepted being named (the unknown gate of `facenet identify`).",
        show_default=False)] = None,
    detect_width: Annotated[int, typer.Option(
        "--detect-width", min=80, help="Live frames are searched for faces at this width (smaller is faster; "
        "at 320 a 640 px frame's faces must be about 160 px wide for HOG, 32 px for mtcnn).")] = 320,
    enrol_frames: Annotated[int, typer.Option(
        "--enrol-frames", min=1, max=100, help="Frames enrolled when a person is added from the camera.")] = 10,
    workers: Annotated[int, typer.Option(
        "--frames-at-once", min=1, max=16, metavar="N", help="Frames processed at once over all browser tabs.")] = 1,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", metavar="NAME", help="Also answer requests addressed to this NAME or NAME:PORT (e.g. a "
        "reverse proxy's name); repeatable. Otherwise only the address served (127.0.0.1, localhost, [::1]) is "
        "answered, so that another site cannot reach the server by pointing its own name at it.",
        show_default=False)] = None,
    device: DeviceOption = Device.auto,
    detector: DetectorOption = DefaultDetector,
    min_face: MinFaceOption = None,
) -> None:
    """Serve the live demo: the page streams the camera, the server names every face (or says unknown).

    Example: facenet serve people.gallery  (then open the printed URL; API docs at /docs)

    Pages of other web sites cannot use it: a Host or Origin that is not this server gets 403, and
    every POST and DELETE needs the X-Facenet-CSRF header, which is printed at start and at
    GET /api/csrf (or the token in a header).
    """
    import secrets

    from ..serve import run_server
    from ..serve.hosts import is_loopback

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)

    def ready(url: str, csrf: str) -> None:
        console.print(f"facenet serve: open {url}", markup=False, highlight=False)
        err_console.print(f"API documentation at /docs; scripts send the header X-Facenet-CSRF: {csrf} with "
                          "POST and DELETE (GET /api/csrf returns it); Ctrl-C stops.", markup=False, highlight=False)

    run_server(gallery, host=host, port=port, model=model, token=token, far=far, detect_width=detect_width,
               enrol_frames=enrol_frames, workers=workers, device=device.value, detector=detector.value,
               min_face=min_face,
               allowed_hosts=tuple(allowed_host or ()), on_ready=ready)
