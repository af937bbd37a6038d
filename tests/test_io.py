"""Loading radiographs: every supported format on real images, and every bad-input case."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from edgeba.dataset import rsna_root
from edgeba.errors import InputError
from edgeba.io import MAX_PIXELS, _parse_age, load_image

REAL = ("10043", "10108", "1398")


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    """A real radiograph as 8-bit grey, the reference the other formats are compared with."""
    return cv2.imread(str(rsna_root() / "train" / f"{REAL[0]}.jpg"), cv2.IMREAD_GRAYSCALE)


def _write(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def write_dicom(path: Path, pixels: np.ndarray, **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, tags.pop("BitsStored", bits), bits - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


# --- good inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("image_id", REAL[:2])
def test_real_jpeg(image_id):
    r = load_image(rsna_root() / "train" / f"{image_id}.jpg")
    assert r.format == "jpeg" and r.bit_depth == 8 and r.pixels.dtype == np.float32
    assert r.pixels.ndim == 2 and 0.0 <= r.pixels.min() and r.pixels.max() <= 1.0
    assert r.warnings == [] and r.sex is None and r.age_months is None
    h, w = r.shape
    # bone bright: the centre (hand) is brighter than the border on average
    assert r.pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > r.pixels[:, :20].mean()


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_8_and_16_bit_rasters(tmp_path, real, ext):
    r8 = load_image(_write(tmp_path / f"a8.{ext}", real))
    r16 = load_image(_write(tmp_path / f"a16.{ext}", (real.astype(np.uint16) * 257)))
    assert r8.bit_depth == 8 and r16.bit_depth == 16
    np.testing.assert_allclose(r8.pixels, real / 255.0, atol=1e-6)
    # 16-bit is stretched min..max; same picture
    assert corr(r16.pixels, real) > 0.999


def test_12_bit_data_in_16_bit_file_uses_full_range(tmp_path, real):
    r = load_image(_write(tmp_path / "a12.png", real.astype(np.uint16) * 16))
    assert r.pixels.min() == 0.0 and r.pixels.max() == 1.0


def test_grey_stored_as_colour_needs_no_warning(tmp_path, real):
    r = load_image(_write(tmp_path / "c.png", cv2.cvtColor(real, cv2.COLOR_GRAY2BGR)))
    assert r.warnings == []
    np.testing.assert_allclose(r.pixels, real / 255.0, atol=1 / 255)


def test_real_colour_image_is_converted_with_warning(tmp_path, real):
    bgr = cv2.cvtColor(real, cv2.COLOR_GRAY2BGR)
    bgr[..., 2] = np.clip(bgr[..., 2].astype(int) + 60, 0, 255)  # a red tint
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    r = load_image(_write(tmp_path / "c.png", bgra))
    assert r.pixels.ndim == 2 and any("colour" in w for w in r.warnings)


def test_loader_keeps_the_stored_grey_scale(tmp_path, real):
    # Polarity is decided from the hand by the predictor (tests/test_hand.py), never from the background here.
    r = load_image(_write(tmp_path / "neg.png", 255 - real))
    assert not r.polarity_known and not any("invert" in w for w in r.warnings)
    np.testing.assert_allclose(r.pixels, (255 - real) / 255.0, atol=1e-6)


def test_float_tiff(tmp_path, real):
    r = load_image(_write(tmp_path / "f.tiff", real.astype(np.float32) * 3.5 - 100))
    assert r.bit_depth == 32 and corr(r.pixels, real) > 0.999


def test_dicom_monochrome2_with_sex_and_age(tmp_path, real):
    px = real.astype(np.uint16) * 16
    r = load_image(write_dicom(tmp_path / "a.dcm", px, BitsStored=12, PatientSex="M", PatientAge="010Y"))
    assert r.format == "dicom" and r.bit_depth == 12
    assert r.sex == "male" and r.age_months == 120.0
    assert corr(r.pixels, real) > 0.999 and not r.warnings


def test_dicom_monochrome1_is_inverted(tmp_path, real):
    r = load_image(write_dicom(tmp_path / "m1", (255 - real).astype(np.uint16), PhotometricInterpretation="MONOCHROME1", PatientSex="F"))
    assert r.sex == "female"
    assert corr(r.pixels, real) > 0.999 and not r.warnings  # bone bright again, no heuristic needed
    assert r.polarity_known  # and the predictor takes the header's word for it


def test_dicom_rescale_and_voi_window(tmp_path, real):
    px = real.astype(np.uint16)
    # window 200..400 of the rescaled values (2 * stored): the background (stored < 100) turns black
    r = load_image(write_dicom(tmp_path / "w.dcm", px, RescaleSlope=2, RescaleIntercept=0, WindowCenter=300, WindowWidth=200))
    expected = np.clip((px.astype(np.float32) * 2 - 200) / 200, 0, 1)
    assert corr(r.pixels, expected) > 0.99
    assert (r.pixels == 0).mean() == pytest.approx((px * 2 <= 200).mean(), abs=0.01)
    assert (r.pixels == 0).mean() > (px == 0).mean() + 0.1  # the window really clipped


def test_dicom_colour_and_unknown_sex(tmp_path, real):
    rgb = np.stack([real] * 3, axis=-1)
    r = load_image(write_dicom(tmp_path / "rgb.dcm", rgb, PatientSex="O"))
    assert r.sex is None and corr(r.pixels, real) > 0.999


@pytest.mark.parametrize("value, months", [("010Y", 120.0), ("018M", 18.0), ("004W", 4 * 7 / 30.4375), ("", None), ("12Y", None), ("010X", None)])
def test_parse_dicom_age(value, months):
    assert _parse_age(value) == (pytest.approx(months) if months is not None else None)


# --- bad inputs: one InputError with a one-line message each -------------------------------------


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _bad_inputs(tmp: Path, real: np.ndarray) -> dict[str, tuple[Path, str]]:
    jpg = cv2.imencode(".jpg", real)[1].tobytes()
    png = cv2.imencode(".png", real)[1].tobytes()
    tif_header = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
    tif_header += struct.pack("<HHII", 256, 4, 1, 20000) + struct.pack("<HHII", 257, 4, 1, 20000) + b"\x00" * 4
    cases = {
        "missing": (tmp / "nope.png", None, "not found"),
        "directory": (tmp / "adir", "dir", "not a regular file"),
        "empty": (tmp / "empty.png", b"", "empty"),
        "truncated jpeg": (tmp / "t.jpg", jpg[: len(jpg) // 2], "truncated"),
        "truncated png": (tmp / "t.png", png[: len(png) // 2], "truncated"),
        "corrupt jpeg": (tmp / "c.jpg", jpg[:200] + bytes(len(jpg) - 202) + b"\xff\xd9", "not a readable image"),
        "text file": (tmp / "notes.png", b"patient notes, not an image\n" * 20, "not a readable image"),
        "huge png": (tmp / "huge.png", _png_header(20000, 20000) + b"\x00" * 100, "limit"),
        "huge tiff": (tmp / "huge.tif", tif_header, "limit"),
        "zero-width png": (tmp / "zero.png", _png_header(0, 500) + b"\x00" * 100, "zero-pixel"),
        "tiny image": (tmp / "tiny.png", cv2.imencode(".png", real[:20, :20])[1].tobytes(), "at least"),
        "blank image": (tmp / "blank.png", cv2.imencode(".png", np.full((300, 300), 128, np.uint8))[1].tobytes(), "blank"),
        "binary garbage": (tmp / "x.tif", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a readable image"),
        "dicom garbage": (tmp / "x.dcm", b"\x00" * 128 + b"DICM" + b"\x01\x02" * 100, "DICOM"),
    }
    out = {}
    for name, (path, data, msg) in cases.items():
        if data == "dir":
            path.mkdir()
        elif data is not None:
            path.write_bytes(data)
        out[name] = (path, msg)
    return out


BAD = ("missing", "directory", "empty", "truncated jpeg", "truncated png", "corrupt jpeg", "text file", "huge png",
       "huge tiff", "zero-width png", "tiny image", "blank image", "binary garbage", "dicom garbage")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_one_line_input_error(tmp_path, real, case):
    path, msg = _bad_inputs(tmp_path, real)[case]
    with pytest.raises(InputError) as info:
        load_image(path)
    text = str(info.value)
    assert msg in text and "\n" not in text and path.name in text


def test_huge_dicom_refused_before_decoding(tmp_path, real):
    p = write_dicom(tmp_path / "big.dcm", real.astype(np.uint16))
    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = 12000, 12000  # header claims 144 MP; the pixel data is far smaller
    ds.save_as(p)
    with pytest.raises(InputError, match=f"over the {MAX_PIXELS // 1_000_000} MP limit"):
        load_image(p)


def test_truncated_dicom(tmp_path, real):
    p = write_dicom(tmp_path / "cut.dcm", real.astype(np.uint16))
    p.write_bytes(p.read_bytes()[:-5000])
    with pytest.raises(InputError, match="unreadable DICOM"):
        load_image(p)


def test_bad_png_prints_nothing_on_stderr(tmp_path, real, capfd):
    """libpng reports CRC errors on fd 2 itself; the loader keeps them quiet (one line from us)."""
    png = bytearray(cv2.imencode(".png", real)[1].tobytes())
    png[60:80] = bytes(20)  # corrupt the first IDAT chunk, keep IEND
    (tmp_path / "crc.png").write_bytes(bytes(png))
    with pytest.raises(InputError):
        load_image(tmp_path / "crc.png")
    assert capfd.readouterr().err == ""


def test_very_large_image_is_shrunk_not_refused(tmp_path, real):
    from edgeba.io import MAX_WORK_PIXELS

    big = cv2.resize(real, (real.shape[1] * 12, real.shape[0] * 12), interpolation=cv2.INTER_NEAREST)  # ~51 MP
    r = load_image(_write(tmp_path / "big.png", big))
    assert r.pixels.size <= MAX_WORK_PIXELS and r.pixels.size > 0.9 * MAX_WORK_PIXELS
    assert abs(r.shape[0] / r.shape[1] - real.shape[0] / real.shape[1]) < 0.01
    assert corr(cv2.resize(r.pixels, real.shape[::-1], interpolation=cv2.INTER_AREA), real) > 0.99
