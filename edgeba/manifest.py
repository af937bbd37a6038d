"""A model directory's manifest.json: what the files are, how to preprocess, and their sha256.

Every file is verified against its sha256 before a backend sees it, so a truncated download or a
swapped file becomes a ModelError instead of a wrong bone age.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgeba.errors import ModelError

DEFAULT_DIR = Path(__file__).parent / "models" / "default"
STAGES = ("segment", "regress")
FORMATS = ("keras", "tflite-fp32", "tflite-int8", "openvino-fp32", "openvino-int8", "onnx-fp32", "onnx-int8")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelFiles:
    """One stage in one format: the main file and, for OpenVINO, the weights next to it."""

    format: str
    path: Path
    weights: Path | None = None


@dataclass
class Manifest:
    dir: Path
    data: dict

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.dir.name)

    @property
    def preprocess(self) -> dict:
        return dict(self.data.get("preprocess", {}))

    @property
    def target(self) -> tuple[float, float]:
        t = self.data.get("target") or {}
        try:
            mean, std = float(t["mean"]), float(t["std"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{self.dir}: manifest.json has no valid target mean/std") from None
        if not std > 0:
            raise ModelError(f"{self.dir}: manifest.json target std must be positive, got {std}")
        return mean, std

    @property
    def sex_input(self) -> bool:
        return bool(self.data.get("sex_input", False))

    @property
    def segments(self) -> bool:
        """Whether the model runs a U-Net stage (it crops to the hand, or at least gates the input).
        A model that crops needs one: opening its missing stage is then a clear ModelError."""
        from edgeba.preprocess import crops_to_hand, input_configs

        return bool(self.formats("segment")) or crops_to_hand(input_configs(self.data))

    def formats(self, stage: str) -> list[str]:
        return [f for f in FORMATS if f in (self.data.get("stages", {}).get(stage) or {})]

    def files(self, stage: str, fmt: str) -> ModelFiles:
        """The verified files of one stage in one format; ModelError if missing or altered."""
        entry = (self.data.get("stages", {}).get(stage) or {}).get(fmt)
        if not entry:
            have = ", ".join(self.formats(stage)) or "none"
            raise ModelError(f"{self.name}: no {fmt} model for stage {stage!r} (available: {have})")
        path = self._verified(entry, "file", "sha256")
        weights = self._verified(entry, "weights", "weights_sha256") if "weights" in entry else None
        return ModelFiles(fmt, path, weights)

    def _verified(self, entry: dict, file_key: str, sha_key: str) -> Path:
        rel = entry.get(file_key)
        if not rel:
            raise ModelError(f"{self.name}: manifest entry lacks {file_key!r}")
        path = (self.dir / rel).resolve()
        if self.dir.resolve() not in path.parents:
            raise ModelError(f"{self.name}: manifest file {rel!r} points outside the model directory")
        if not path.is_file():
            raise ModelError(f"{self.name}: model file {rel} is missing from {self.dir}")
        expected = str(entry.get(sha_key, "")).lower()
        if not expected:
            raise ModelError(f"{self.name}: manifest has no {sha_key} for {rel}; refusing an unverifiable model")
        if sha256(path) != expected:
            raise ModelError(f"{self.name}: {rel} does not match its sha256 in manifest.json (corrupt or replaced file)")
        return path


def load_manifest(model_dir: str | Path | None = None) -> Manifest:
    """Read DIR/manifest.json (the shipped default when DIR is None)."""
    d = Path(model_dir) if model_dir is not None else DEFAULT_DIR
    f = d / "manifest.json"
    if not f.is_file():
        if model_dir is None:
            raise ModelError(f"the default model is not installed ({f} is missing); pass --model DIR")
        raise ModelError(f"{d}: not a model directory (no manifest.json)")
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{f}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or "regress" not in data["stages"]:
        raise ModelError(f"{f}: manifest has no 'stages' with a 'regress' model")
    return Manifest(d, data)
