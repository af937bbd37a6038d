"""Stage 1, load: any supported file -> a grayscale float radiograph in [0, 1] plus metadata.

Supported: PNG, JPEG, TIFF (8/16-bit, grey or colour) through OpenCV, DICOM through pydicom
(modality LUT, VOI LUT/window, MONOCHROME1 inversion, PatientSex, PatientAge).
Every failure is an InputError with a one-line message.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeba.errors import InputError
from edgeba.quiet import quiet_stderr

MAX_PIXELS = 100_000_000  # 100 MP: larger is not a hand radiograph, and decoding it could exhaust a Pi
MIN_SIDE = 64  # smaller cannot show hand bones
MAX_FILE_BYTES = 512 * 1024 * 1024
# Larger images are shrunk (area average) before the float conversion: the models see the hand at
# <= 384 px, and a 100 MP float image alone would take 400 MB of a Raspberry Pi's memory.
MAX_WORK_PIXELS = 25_000_000


@dataclass
class Radiograph:
    pixels: np.ndarray  # float32, HxW, [0, 1], bone bright
    path: str = ""
    format: str = ""
    bit_depth: int = 8
    sex: str | None = None  # "male" / "female" from the file's metadata (DICOM), else None
    age_months: float | None = None  # chronological age from the file's metadata, else None
    warnings: list[str] = field(default_factory=list)
    # True when the file states its grey scale (DICOM MONOCHROME1/2): then it is authoritative. Else the
    # predictor decides from the hand itself (edgeba/hand.py); loading never guesses from the background.
    polarity_known: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def _is_dicom(head: bytes, path: Path) -> bool:
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def _tiff_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first IFD of a classic TIFF (tags 256/257)."""
    end = "<" if head[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", head[4:8])
        (count,) = struct.unpack(end + "H", head[ifd : ifd + 2])
        dims = {}
        for k in range(count):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack(end + "HH", head[e : e + 4])
            if tag in (256, 257):
                fmt = end + ("H" if typ == 3 else "I")
                dims[tag] = struct.unpack(fmt, head[e + 8 : e + 8 + struct.calcsize(fmt)])[0]
        return (dims[256], dims[257]) if len(dims) == 2 else None
    except (struct.error, KeyError):
        return None


def _header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, TIFF or BMP header, so huge images are refused before decoding."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(head)
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            if marker == 0xDA:  # start of scan: no frame header before the pixel data
                break
            length = struct.unpack(">H", head[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return None


def _check_size(w: int, h: int, name: str) -> None:
    if w == 0 or h == 0:
        raise InputError(f"{name}: image has a zero-pixel dimension ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InputError(f"{name}: image is {w}x{h} ({w * h / 1e6:.0f} MP), over the {MAX_PIXELS // 1_000_000} MP limit")
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{name}: image is only {w}x{h} pixels; a hand radiograph needs at least {MIN_SIDE} px a side")


UNIT_8BIT = np.arange(256, dtype=np.float32) / 255.0  # an 8-bit level as loaded


def _to_unit(img: np.ndarray, name: str) -> tuple[np.ndarray, int, list[str]]:
    """Scale any integer/float grey image to [0, 1]; returns (pixels, bit depth, warnings)."""
    warnings = []
    if img.dtype == np.uint8:
        return cv2.LUT(img, UNIT_8BIT), 8, warnings  # img.astype(np.float32) / 255, bit for bit, in one pass
    if img.dtype == np.bool_:
        raise InputError(f"{name}: image is binary (1-bit), not a radiograph")
    depth = 16 if img.dtype in (np.uint16, np.int16) else 32
    img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        raise InputError(f"{name}: image is blank (every pixel is {lo:g})")
    # The stored bit depth rarely equals the used one (12-bit data in 16-bit files): stretch min..max.
    return (img - lo) / (hi - lo), depth, warnings


def _grey(img: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    if img.ndim == 2:
        return img, []
    if img.ndim == 3 and img.shape[2] in (3, 4):
        bgr = img[:, :, :3]
        spread = float(np.abs(bgr.astype(np.float32) - bgr.mean(axis=2, keepdims=True)).mean())
        scale = 255.0 if img.dtype == np.uint8 else float(max(bgr.max(), 1))
        grey = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)
        if spread / scale > 0.02:
            return grey, ["colour image converted to grayscale; radiographs are normally grey - check the input"]
        return grey, []
    raise InputError(f"{name}: unsupported image layout {img.shape}")


def _truncated(data: bytes) -> bool:
    """PNG without its IEND chunk or JPEG without its EOI marker: decoders would fill the rest with grey."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    return False


def _read_raster(data: bytes, name: str) -> np.ndarray:
    if _truncated(data):
        raise InputError(f"{name}: image file is truncated (incomplete download or copy?)")
    with quiet_stderr():
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise InputError(f"{name}: not a readable image (corrupt, truncated, or an unsupported format)")
    return img


def _parse_age(value: str) -> float | None:
    """DICOM AS value ('012Y', '018M', '030W', '100D') -> months."""
    value = (value or "").strip().upper()
    if len(value) != 4 or not value[:3].isdigit():
        return None
    n = int(value[:3])
    return {"Y": n * 12.0, "M": float(n), "W": n * 7 / 30.4375, "D": n / 30.4375}.get(value[3])


def _read_dicom(path: Path, name: str) -> tuple[np.ndarray, dict]:
    import pydicom  # base dependency, imported lazily to keep start-up fast
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every non-conformant tag; we only need a few
        try:
            ds = pydicom.dcmread(str(path))
            if "PixelData" not in ds:
                raise InputError(f"{name}: DICOM file holds no image (no pixel data)")
            rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
            _check_size(cols, rows, name)  # before decoding: a huge frame could exhaust a Pi
            raw = ds.pixel_array
            colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            if frames > 1:
                raw = raw[0]  # multi-frame: the first frame
            if colour:
                img = cv2.cvtColor(np.ascontiguousarray(raw[..., :3]), cv2.COLOR_RGB2GRAY)
            else:
                img = apply_modality_lut(raw, ds)
                if "WindowCenter" in ds or "VOILUTSequence" in ds:
                    img = apply_voi_lut(img, ds)
            img = np.asarray(img, dtype=np.float32)
            photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
            sex = str(getattr(ds, "PatientSex", "") or "").upper()
            age = str(getattr(ds, "PatientAge", "") or "")
            bits = int(getattr(ds, "BitsStored", 16) or 16)
        except InputError:
            raise
        except Exception as exc:  # pydicom raises many types for broken or compressed files
            msg = (str(exc).splitlines() or [""])[0][:120]
            raise InputError(f"{name}: unreadable DICOM ({type(exc).__name__}: {msg})") from None
    if img.ndim != 2:
        raise InputError(f"{name}: unsupported DICOM pixel layout {img.shape}")
    if photometric == "MONOCHROME1":
        img = img.max() - img  # MONOCHROME1 stores bone dark
    meta: dict = {"warnings": []}
    meta["sex"] = {"M": "male", "F": "female"}.get(sex)
    meta["age_months"] = _parse_age(age)
    meta["bit_depth"] = bits
    meta["polarity_known"] = photometric in ("MONOCHROME1", "MONOCHROME2")
    return img, meta


def load_image(path: str | os.PathLike) -> Radiograph:
    """Read one radiograph. Raises InputError with a one-line message on any bad input."""
    p = Path(path)
    name = p.name or str(p)
    if not p.exists():
        raise InputError(f"{name}: file not found")
    if not p.is_file():
        raise InputError(f"{name}: not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"{name}: file is empty")
    if size > MAX_FILE_BYTES:
        raise InputError(f"{name}: file is {size / 2**20:.0f} MiB, too large for a hand radiograph")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read file ({exc.strerror})") from None

    meta: dict = {"warnings": []}
    if _is_dicom(data[:132], p):
        img, meta = _read_dicom(p, name)
        fmt = "dicom"
    else:
        dims = _header_size(data)
        if dims:
            _check_size(*dims, name)
        img = _read_raster(data, name)
        fmt = {b"\x89P": "png", b"\xff\xd8": "jpeg", b"II": "tiff", b"MM": "tiff"}.get(data[:2], "image")
    grey, warn = _grey(img, name)
    meta["warnings"] += warn
    _check_size(grey.shape[1], grey.shape[0], name)
    del img
    if grey.size > MAX_WORK_PIXELS:
        s = (MAX_WORK_PIXELS / grey.size) ** 0.5
        grey = cv2.resize(grey, (int(grey.shape[1] * s), int(grey.shape[0] * s)), interpolation=cv2.INTER_AREA)
    pixels, depth, warn = _to_unit(grey, name)
    meta["warnings"] += warn
    if float(pixels.std()) < 0.01:
        raise InputError(f"{name}: image is blank or nearly uniform")
    return Radiograph(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        path=str(p),
        format=fmt,
        bit_depth=meta.get("bit_depth", depth),
        sex=meta.get("sex"),
        age_months=meta.get("age_months"),
        warnings=meta["warnings"],
        polarity_known=meta.get("polarity_known", False),
    )
