"""The clinic web page's API (`edgeba serve`): every input kind, every error, concurrency, privacy.

Runs on the shipped default model (the one a clinic serves) with Starlette's test client; the tests that
need real sockets start `edgeba serve` itself (tests/serve_fixtures.py).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx2 as httpx
import numpy as np
import psutil
import pytest
from runtime_fixtures import GOOD_IDS, run_cli
from serve_fixtures import start_server
from starlette.testclient import TestClient
from test_io import BAD, _bad_inputs, write_dicom

from edgeba.dataset import rsna_root
from edgeba.manifest import DEFAULT_DIR
from edgeba.predictor import Predictor
from edgeba.serve import DEFAULT_MAX_UPLOAD, create_app

LIMIT = 4 * 2**20  # a small upload limit for the 413 tests (the default, 100 MB, is checked separately)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(DEFAULT_DIR)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, DEFAULT_DIR, max_upload=LIMIT), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def real_grey() -> np.ndarray:
    return cv2.imread(str(rsna_root() / "train" / f"{GOOD_IDS[0]}.jpg"), cv2.IMREAD_GRAYSCALE)


def post(client, name: str, data: bytes, **form):
    return client.post("/api/predict", files={"file": (name, data, "application/octet-stream")}, data=form)


def ok(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def error(resp, status: int) -> str:
    """The error contract: the status, a JSON body with one line and nothing else."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def encoded(ext: str, img: np.ndarray) -> bytes:
    good, buf = cv2.imencode(ext, img)
    assert good
    return buf.tobytes()


# --- the page --------------------------------------------------------------------------------------


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="files"', 'id="drop-zone"', 'id="estimate"', 'id="download-csv"', 'id="print-all"', 'name="sex"',
                    'name="birth_date"', 'name="study_date"', 'name="age_months"', 'class="overlay"', 'name="viewport"'):
        assert element in page.text, element
    for asset in ("/static/app.js", "/static/style.css"):
        resp = client.get(asset)
        assert resp.status_code == 200 and len(resp.text) > 1000, asset
    # Offline: nothing is fetched from another host (no CDN, no web font).
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_info_mirrors_edgeba_info(client):
    info = client.get("/api/info").json()
    proc = run_cli("info", "--json", "--model", DEFAULT_DIR)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert info.pop("serve") == {"max_upload_bytes": LIMIT}
    assert info == cli


# --- every input kind ------------------------------------------------------------------------------


def test_jpeg_equals_the_cli(client, predictor):
    image = rsna_root() / "train" / f"{GOOD_IDS[0]}.jpg"
    j = ok(post(client, image.name, image.read_bytes(), sex="female"))
    proc = run_cli("predict", image, "--sex", "female", "--json", "--model", DEFAULT_DIR)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    overlay = j.pop("overlay_png")
    # Exactly `predict --json`'s object: the same keys and values, except the run's timings and the file's path.
    assert set(j) == set(cli) and set(j["timings_ms"]) == set(cli["timings_ms"])
    for key in set(cli) - {"timings_ms", "file"}:
        assert j[key] == cli[key], key
    assert j["file"] == image.name and j["sex_source"] == "argument"
    assert j["bone_age_months"] == round(predictor.predict(image, "female").bone_age_months, 2)
    assert overlay.startswith("data:image/png;base64,")
    png = cv2.imdecode(np.frombuffer(base64.b64decode(overlay.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    green = (png[..., 1] > 150) & (png[..., 0] < 60) & (png[..., 2] < 60)
    assert png.shape[:2] == real_shape(image) and green.sum() > 500  # the radiograph with the hand outline


def real_shape(path) -> tuple[int, int]:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape


def test_png_and_16_bit_tiff_give_the_jpegs_estimate(client, real_grey):
    jpeg = ok(post(client, "a.jpg", encoded(".jpg", real_grey), sex="male"))["bone_age_months"]
    png = ok(post(client, "a.png", encoded(".png", real_grey), sex="male"))["bone_age_months"]
    tiff = ok(post(client, "a.tif", encoded(".tif", real_grey.astype(np.uint16) * 257), sex="male"))["bone_age_months"]
    # the same pixels (PNG, 16-bit TIFF) or nearly (JPEG re-encoding): the same estimate within a month
    assert png == pytest.approx(tiff, abs=0.05) and png == pytest.approx(jpeg, abs=1.0)


def test_dicom_sex_and_age_from_the_header(client, real_grey, tmp_path):
    dcm = write_dicom(tmp_path / "hand.dcm", real_grey.astype(np.uint16) * 16, BitsStored=12, PatientSex="F",
                      PatientAge="009Y", PatientBirthDate="20150302", StudyDate="20240615").read_bytes()
    header = ok(client.post("/api/dicom-header", files={"file": ("hand.dcm", dcm)}))
    assert header == {"dicom": True, "sex": "female", "birth_date": "2015-03-02", "study_date": "2024-06-15", "age_months": 108.0}
    j = ok(post(client, "hand.dcm", dcm))  # no sex in the form: the header's
    assert j["sex"] == "female" and j["sex_source"] == "dicom" and j["chronological_age_months"] == 108.0
    assert j["bone_minus_chronological_months"] == pytest.approx(j["bone_age_months"] - 108.0, abs=0.02)
    j = ok(post(client, "hand.dcm", dcm, sex="male"))
    assert j["sex"] == "male" and any("overrides the file's PatientSex (female)" in w for w in j["warnings"])
    # Not DICOM: nothing to prefill, and no error.
    assert ok(client.post("/api/dicom-header", files={"file": ("a.png", encoded(".png", real_grey))})) == {"dicom": False}


def test_chronological_age_from_the_form(client, real_grey):
    png = encoded(".png", real_grey)
    base = ok(post(client, "a.png", png, sex="female"))
    assert base["chronological_age_months"] is None and base["bone_minus_chronological_months"] is None
    j = ok(post(client, "a.png", png, sex="female", age_months="100"))
    assert j["chronological_age_months"] == 100.0
    assert j["bone_minus_chronological_months"] == pytest.approx(base["bone_age_months"] - 100.0, abs=0.01)
    j = ok(post(client, "a.png", png, sex="female", birth_date="2016-01-01", study_date="2024-01-01"))
    assert j["chronological_age_months"] == pytest.approx(2922 / 30.4375, abs=0.01)  # 2922 days: 8 years


# --- every error -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in BAD if c not in ("missing", "directory")])  # a missing file cannot be uploaded
def test_bad_file_is_a_400_naming_the_file(client, tmp_path, real_grey, case):
    path, msg = _bad_inputs(tmp_path, real_grey)[case]
    line = error(post(client, path.name, path.read_bytes(), sex="male"), 400)
    assert msg in line and path.name in line


def test_not_a_hand_is_refused(client):
    img = np.full((800, 600), 20, np.uint8)  # a convex body, no fingers (refused by every INT8 backend)
    cv2.ellipse(img, (300, 400), (150, 250), 0, 0, 360, 200, -1)
    assert "no plausible hand found" in error(post(client, "blob.png", encoded(".png", img), sex="male"), 422)


@pytest.mark.parametrize("form, message", [
    ({}, "needs the patient's sex"),
    ({"sex": "unknown"}, "sex must be 'male' or 'female'"),
    ({"sex": "male", "age_months": "ten"}, "not a number of months"),
    ({"sex": "male", "age_months": "-3"}, "outside 0-240 months"),
    ({"sex": "male", "age_months": "nan"}, "outside 0-240 months"),
    ({"sex": "male", "age_months": "100", "birth_date": "2016-01-01"}, "not both"),
    ({"sex": "male", "birth_date": "2016-01-01"}, "both the date of birth and the study date"),
    ({"sex": "male", "birth_date": "01/02/2016", "study_date": "2024-01-01"}, "not a date"),
    ({"sex": "male", "birth_date": "2024-01-02", "study_date": "2024-01-01"}, "before the date of birth"),
])
def test_bad_form_is_a_400(client, real_grey, form, message):
    assert message in error(post(client, "a.png", encoded(".png", real_grey), **form), 400)


def test_bad_requests(client):
    assert "multipart/form-data" in error(client.post("/api/predict", json={"sex": "male"}), 400)
    assert "no file uploaded" in error(client.post("/api/predict", data={"sex": "male"}, files={"other": ("a", b"x")}), 400)
    text_field = {"file": (None, "not a file"), "sex": (None, "male")}  # multipart, but 'file' is not a file
    assert "no file uploaded" in error(client.post("/api/predict", files=text_field), 400)
    broken = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nabc"  # never closed
    resp = client.post("/api/predict", content=broken, headers={"content-type": "multipart/form-data; boundary=b"})
    error(resp, 400)
    as_file = {"file": ("a.png", b"x"), "sex": ("sex.txt", b"male")}
    assert "Too many files" in error(client.post("/api/predict", files=as_file), 400)  # only 'file' may be a file
    error(client.get("/api/predict"), 405)
    error(client.get("/no/such/page"), 404)


def test_upload_over_the_limit_is_413(client):
    big = b"\xff\xd8" + bytes(LIMIT)
    assert "over the 4 MB limit" in error(post(client, "big.jpg", big, sex="male"), 413)

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n\r\n"
        for _ in range(LIMIT // 2**16 + 2):
            yield bytes(2**16)

    resp = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in resp.request.headers
    assert "over the 4 MB limit" in error(resp, 413)
    assert DEFAULT_MAX_UPLOAD == 100 * 2**20


def test_uploads_leave_no_file_behind(client, real_grey, tmp_path, monkeypatch):
    """The upload lives in a private temporary folder while it is processed, then is deleted, whatever
    happened; a file name cannot point outside that folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    original = Predictor.predict

    def spy(self, path, *args, **kw):
        seen.append((path, oct(path.parent.stat().st_mode & 0o777)))
        return original(self, path, *args, **kw)

    monkeypatch.setattr(Predictor, "predict", spy)
    ok(post(client, "../../../etc/passwd.png", encoded(".png", real_grey), sex="male"))
    error(post(client, "bad.png", b"not an image" * 10, sex="male"), 400)
    twice = cv2.resize(real_grey, None, fx=2, fy=2).astype(np.uint16) * 257
    _, big = cv2.imencode(".tif", twice, [cv2.IMWRITE_TIFF_COMPRESSION, 1])  # uncompressed, 2.8 MB
    big = big.tobytes()  # > 1 MB: Starlette spools it to a file
    assert len(big) > 2**20
    ok(post(client, "big.tif", big, sex="male"))
    assert [p.name for p, _ in seen] == ["passwd.png", "bad.png", "big.tif"]
    assert all(p.parent.parent == tmp_path and mode == "0o700" for p, mode in seen)
    assert list(tmp_path.iterdir()) == []


# --- concurrency -----------------------------------------------------------------------------------


def test_twenty_parallel_uploads_share_one_model(client, predictor, monkeypatch):
    """20 uploads at once: all answered, all the same estimate (the runtimes are not thread-safe: a lock
    serialises them), and no request loads a model."""
    image = (rsna_root() / "train" / f"{GOOD_IDS[1]}.jpg").read_bytes()
    expected = ok(post(client, "x.jpg", image, sex="male"))["bone_age_months"]

    def no_second_model(*a, **kw):
        raise AssertionError("a request loaded a model")

    monkeypatch.setattr(Predictor, "__init__", no_second_model)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: post(client, f"{i}.jpg", image, sex="male"), range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    assert {r.json()["bone_age_months"] for r in answers} == {expected}
    assert sorted(r.json()["file"] for r in answers) == sorted(f"{i}.jpg" for i in range(20))


def _peak_rss(pid: int, work) -> tuple[int, object]:
    """Run `work()` while sampling the process's resident memory every 10 ms; (peak bytes, work's result)."""
    proc, peak, done = psutil.Process(pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        result = work()
    finally:
        done.set()
        t.join()
    return peak[0], result


def test_live_server_parallel_uploads_memory_and_privacy(real_grey):
    """The real `edgeba serve`: 20 parallel uploads of a 13-megapixel radiograph over sockets are all answered
    with the same estimate, the server's memory grows by about one image's worth (not 20), a stream of
    bad uploads does not take it down, and it prints nothing about the requests."""
    server = start_server("--model", str(DEFAULT_DIR))
    try:
        big = encoded(".png", cv2.resize(real_grey, None, fx=6, fy=6, interpolation=cv2.INTER_CUBIC))
        name = "patient-DOE-JANE-1234.png"

        def send(i=0, data=big, filename=name):
            with httpx.Client(timeout=300) as http:
                return http.post(server.url + "api/predict", files={"file": (filename, data)}, data={"sex": "female", "age_months": "120"})

        first = send()
        assert first.status_code == 200, first.text
        base = psutil.Process(server.proc.pid).memory_info().rss
        one_peak, _ = _peak_rss(server.proc.pid, send)
        many_peak, answers = _peak_rss(server.proc.pid, lambda: list(ThreadPoolExecutor(20).map(send, range(20))))
        assert [r.status_code for r in answers] == [200] * 20
        assert {r.json()["bone_age_months"] for r in answers} == {first.json()["bone_age_months"]}
        one, many = one_peak - base, many_peak - base
        print(f"server RSS {base / 2**20:.0f} MiB; peak growth: one upload {one / 2**20:.0f} MiB, 20 parallel {many / 2**20:.0f} MiB")
        assert many < 1.5 * one + 64 * 2**20, (one, many)  # measured: 296 and 316 MiB (with 20 threads: 241 and 597)

        for data in (b"", b"garbage" * 100, big[: len(big) // 2]):  # bad uploads, then a good one: still serving
            assert send(data=data).status_code == 400
        with httpx.Client(timeout=60) as http:
            assert http.post(server.url + "api/predict", content=b"\x00" * 1000,
                             headers={"content-type": "multipart/form-data; boundary=zz"}).status_code == 400
        assert send().status_code == 200
    finally:
        output = server.stop()
    assert server.proc.returncode == 0, output
    assert "DOE" not in output and "api/predict" not in output and "POST" not in output, output


# --- the command -----------------------------------------------------------------------------------


def one_line_error(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeba: error: "), proc.stderr
    return lines[0]


def test_serve_without_the_extra_says_which_to_install():
    code = "import sys; sys.modules['starlette'] = None; sys.argv = ['edgeba', 'serve']; from edgeba.cli import app; app()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'edgeba[serve]'" in one_line_error(proc)


def test_serve_on_a_busy_port_or_a_bad_model_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(run_cli("serve", "--port", port))
    assert "not a model directory" in one_line_error(run_cli("serve", "--port", "0", "--model", tmp_path))


def test_only_loopback_is_private():
    from edgeba.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "clinic-pi"))
