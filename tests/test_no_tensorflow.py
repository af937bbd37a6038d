"""The light runtime never imports TensorFlow or Keras: importing edgeba, `edgeba --help`, and
`edgeba predict` / `info` / `evaluate` with every non-Keras backend."""

from __future__ import annotations

import subprocess
import sys

import pytest
from runtime_fixtures import *  # noqa: F401,F403
from runtime_fixtures import GOOD_IDS

from edgeba.dataset import rsna_root

HEAVY = ("tensorflow", "keras", "jax", "torch", "tf2onnx")

PROBE = """
import sys
from edgeba.cli import app
try:
    app({args!r})
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
loaded = sorted(m for m in {heavy!r} if m in sys.modules)
print("LOADED", ",".join(loaded), "EXIT", code)
"""


def _probe(*args: str) -> tuple[list[str], int, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=list(map(str, args)), heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED")][-1].split()
    loaded = line[1].split(",") if line[1] != "EXIT" else []
    return [m for m in loaded if m], int(line[-1]), proc.stderr


def test_import_edgeba_is_light():
    proc = subprocess.run([sys.executable, "-c", "import edgeba, edgeba.predictor, edgeba.cli, edgeba.batch, edgeba.metrics, sys;"
                           f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("backend", ["auto", "tflite", "onnx", "openvino"])
def test_predict_never_imports_tensorflow(model_dir, good_image, backend):
    loaded, code, err = _probe("predict", good_image, "--sex", "male", "--model", model_dir, "--backend", backend, "--json")
    assert code == 0, err
    assert loaded == [], f"predict --backend {backend} imported {loaded}"


def test_info_and_evaluate_never_import_tensorflow(fixture_model, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("id,boneage_months,male\n" + f"{GOOD_IDS[0]},120,1\n")
    for args in (["--help"], ["info", "--model", fixture_model], ["evaluate", rsna_root() / "train", labels, "--model", fixture_model]):
        loaded, code, err = _probe(*args)
        assert code == 0 and loaded == [], (args, loaded, err)


def test_probe_sees_keras_when_it_is_asked_for(fixture_model, good_image):
    """The check above can fail: --backend keras does load Keras (and its framework)."""
    loaded, code, err = _probe("predict", good_image, "--sex", "male", "--model", fixture_model, "--backend", "keras")
    assert code == 0, err
    assert "keras" in loaded
