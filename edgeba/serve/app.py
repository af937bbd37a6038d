"""The Starlette app behind `edgeba serve`: the page (static files shipped in the package) and its API.

- `POST /api/predict` (multipart `file`, `sex`, optional `age_months` or `birth_date` + `study_date`):
  `edgeba predict --json`'s object plus `overlay_png` (a PNG data URL of the QC overlay).
- `POST /api/dicom-header` (multipart `file`): the header fields the page prefills.
- `GET /api/info`: `edgeba info --json`'s object.
Every error is JSON `{"error": "one line"}` with a 4xx code (5xx only for a broken model or a bug).

Privacy: the upload lives in a private temporary folder only while it is processed, and nothing about a
request (file name, sex, dates, result) is logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import cv2
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgeba import overlay
from edgeba.errors import EdgebaError, InputError, ModelError, SegmentationError
from edgeba.info import collect
from edgeba.predictor import Predictor
from edgeba.serve.patient import chronological_age, dicom_fields

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 100 * 1024 * 1024
log = logging.getLogger("edgeba.serve")


class UploadTooLarge(Exception):
    pass


class _JSON(JSONResponse):
    """JSON that tolerates numpy scalars and arrays (mask QC metrics), as `predict --json` does."""

    def render(self, content) -> bytes:
        return json.dumps(content, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return _JSON({"error": " ".join(str(message).split())[:300]}, status_code=status)


def _safe_name(filename: str | None) -> str:
    """The upload's own base name (error messages name the file the user chose), without path parts
    or characters a file system could mind."""
    name = re.sub(r"[^\w.\- ]", "_", Path((filename or "").replace("\\", "/")).name).strip(" .")
    return name[-100:] or "upload"


def prediction_json(pred, predictor: Predictor) -> dict:
    """Exactly `edgeba predict --json`'s object (edgeba/cli.py builds the same one)."""
    j = pred.to_json()
    j["formats"] = predictor.formats
    j["timings_ms"]["model_load"] = round(predictor.load_ms, 2)
    return j


def overlay_data_url(pred, predictor: Predictor) -> str:
    label = f"{pred.bone_age_months:.0f} months" + ("" if not pred.warnings else " (see warnings)")  # as `--overlay`
    image = overlay.draw(pred.radiograph.pixels, pred.mask, predictor.crop_margin, label, predictor.crops)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise EdgebaError("cannot encode the overlay image")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def create_app(predictor: Predictor, model_dir: str | Path | None = None, max_upload: int = DEFAULT_MAX_UPLOAD) -> Starlette:
    """One app around one loaded Predictor (the model is loaded once, by the caller, before serving)."""
    # One worker thread runs every prediction, from decoding to the overlay. The runtimes' interpreters
    # and infer requests are not safe to call from two threads at once (TFLite, OpenVINO) and each already
    # uses every core, so nothing is lost; and one thread means one decoded radiograph in memory at a time
    # and one malloc arena. (A lock around pool threads instead: 20 parallel 13 MP uploads peaked at 2.5x
    # one upload's memory, left in per-thread arenas; one thread: 1.07x. tests/test_serve.py checks it.)
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="edgeba-model")

    async def read_form(request: Request):
        """The multipart form, refusing a body over `max_upload` (413) whether or not it says its length.
        Files over 1 MB spool to an anonymous temporary file (Starlette), deleted when the form closes."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InputError("send the image as multipart/form-data with a 'file' field")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload:
            raise UploadTooLarge()
        seen = 0
        receive = request.receive

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_upload:
                raise UploadTooLarge()
            return message

        return await Request(request.scope, counting_receive).form(max_files=1, max_fields=10)

    async def with_upload(request: Request, work, thread=None):
        """Run `work(path, form)` in `thread` (default: any worker thread) on the upload, saved in a private
        folder (mode 0700) that is deleted afterwards; every failure becomes a JSON error, never a dropped server."""
        form = None
        try:
            form = await read_form(request)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InputError("no file uploaded: the form needs a 'file' field with the image")

            def run():
                with tempfile.TemporaryDirectory(prefix="edgeba-serve-") as folder:
                    path = Path(folder) / _safe_name(upload.filename)
                    with open(path, "wb") as out:
                        shutil.copyfileobj(upload.file, out, 1 << 20)
                    return work(path, form)

            if thread is None:
                return _JSON(await anyio.to_thread.run_sync(run))
            return _JSON(await asyncio.get_running_loop().run_in_executor(thread, run))
        except UploadTooLarge:
            return _error(413, f"the upload is over the {max_upload / 2**20:.0f} MB limit")
        except EdgebaError as exc:
            status = 422 if isinstance(exc, SegmentationError) else 503 if isinstance(exc, ModelError) else 400
            return _error(status, str(exc))
        except MemoryError:
            return _error(413, "out of memory reading this image (is it absurdly large?)")
        except HTTPException as exc:  # Starlette's own refusals, e.g. a malformed multipart body
            return _error(exc.status_code if exc.status_code < 500 else 400, exc.detail)
        except Exception as exc:  # a bug: one line to the user, the type (never the message: it may name the file) to the log
            if os.environ.get("EDGEBA_DEBUG"):
                raise
            log.error("internal error in %s: %s", request.url.path, type(exc).__name__)
            return _error(500, f"internal error: {type(exc).__name__} (rerun the server with EDGEBA_DEBUG=1 for details)")
        finally:
            if form is not None:
                await form.close()

    def predict_upload(path: Path, form) -> dict:
        # Text fields: the form holds one file at most (max_files=1), and that is `file`.
        sex = (form.get("sex") or "").strip().lower() or None
        age = chronological_age(form.get("age_months"), form.get("birth_date"), form.get("study_date"))
        pred = predictor.predict(path, sex)
        j = prediction_json(pred, predictor)
        j["file"] = path.name  # the user's file name, not the temporary path
        if age is not None:  # the form's age (entered, or prefilled from the header) wins over PatientAge
            j["chronological_age_months"] = round(age, 2)
            j["bone_minus_chronological_months"] = round(pred.bone_age_months - age, 2)
        j["overlay_png"] = overlay_data_url(pred, predictor)
        return j

    async def api_predict(request: Request):
        return await with_upload(request, predict_upload, model_thread)

    async def api_dicom_header(request: Request):
        return await with_upload(request, lambda path, form: dicom_fields(path))

    async def api_info(request: Request):
        """`edgeba info --json`, plus this server's upload limit (the page checks sizes before sending)."""
        data = await anyio.to_thread.run_sync(collect, model_dir)
        return _JSON(data | {"serve": {"max_upload_bytes": max_upload}})

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def not_found(request: Request, exc: HTTPException):
        return _error(exc.status_code, exc.detail)

    routes = [
        Route("/", index),
        Route("/api/predict", api_predict, methods=["POST"]),
        Route("/api/dicom-header", api_dicom_header, methods=["POST"]),
        Route("/api/info", api_info),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        model_thread.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    app.state.predictor = predictor
    return app
