"""Fuzz the loader: whatever the bytes, load_image returns a valid radiograph or raises InputError."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_io import write_dicom

from edgeba.dataset import rsna_root
from edgeba.errors import InputError
from edgeba.io import MIN_SIDE, load_image

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seeds() -> dict[str, bytes]:
    """Valid files of each format, small enough to mutate quickly."""
    img = cv2.imread(str(rsna_root() / "train" / "10043.jpg"), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (96, 128))
    out = {ext: cv2.imencode(f".{ext}", im)[1].tobytes() for ext, im in
           (("png", img), ("jpg", img), ("tiff", img.astype(np.uint16) * 200), ("bmp", img))}
    buf = io.BytesIO()
    write_dicom(buf, img.astype(np.uint16), PatientSex="M", PatientAge="007Y")
    out["dcm"] = buf.getvalue()
    return out


SEEDS = _seeds()


def _check(path) -> None:
    try:
        r = load_image(path)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    p = r.pixels
    assert p.dtype == np.float32 and p.ndim == 2 and min(p.shape) >= MIN_SIDE
    assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0


@st.composite
def mutated(draw):
    ext = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[ext])
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 4096))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "zero":
            data[pos : pos + 16] = bytes(len(data[pos : pos + 16]))
    return ext, bytes(data)


@settings(SETTINGS, max_examples=400)
@given(mutated())
def test_mutated_files_never_crash(tmp_path, case):
    ext, data = case
    path = tmp_path / f"fuzz.{ext}"
    path.write_bytes(data)
    _check(path)


@SETTINGS
@given(st.binary(max_size=2048), st.sampled_from(["png", "jpg", "tif", "dcm", "bin"]))
def test_random_bytes_never_crash(tmp_path, data, ext):
    path = tmp_path / f"random.{ext}"
    path.write_bytes(data)
    _check(path)


@SETTINGS
@given(
    st.sampled_from([np.uint8, np.uint16, np.float32]),
    st.integers(1, 200), st.integers(1, 200), st.sampled_from([1, 3, 4]),
    st.sampled_from(["constant", "noise", "ramp"]),
)
def test_any_decodable_array_never_crashes(tmp_path, dtype, h, w, channels, content):
    rng = np.random.default_rng(h * 1000 + w)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if content == "constant":
        a = np.full(shape, 7, dtype)
    elif content == "noise":
        a = (rng.random(shape) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    else:
        a = np.broadcast_to(np.linspace(0, 200, w, dtype=np.float64)[None, :, None][..., : max(1, channels)], (h, w, channels)).reshape(shape).astype(dtype)
    ext = "tiff" if dtype == np.float32 else "png"
    path = tmp_path / f"arr.{ext}"
    assert cv2.imwrite(str(path), a)
    _check(path)


def test_seeds_are_valid(tmp_path):
    """The fuzzers start from files that load (so mutations explore the decoders, not just refusals)."""
    for ext, data in SEEDS.items():
        (tmp_path / f"seed.{ext}").write_bytes(data)
        r = load_image(tmp_path / f"seed.{ext}")
        assert r.shape == (128, 96)
    assert load_image(tmp_path / "seed.dcm").sex == "male"
    assert pydicom.dcmread(tmp_path / "seed.dcm").PatientAge == "007Y"


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + b"\xff" * 8, b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff"])
def test_header_only_files(tmp_path, data):
    (tmp_path / "h.img").write_bytes(data)
    with pytest.raises(InputError):
        load_image(tmp_path / "h.img")
