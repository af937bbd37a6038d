"""The shipped default model against its own float Keras models on a small real validation subset.

The full-split numbers are in export/PARITY.md (python export/parity.py --model edgeba/models/default).
Here SUBSET images keep the run short; the thresholds are the issue-5 targets, with room for the
subset's sampling noise where the statistic is noisy (derived in PARITY.md).
"""

from __future__ import annotations

import pytest

import keras  # noqa: F401  (the test environment installs every extra; missing is a failure)
import onnxruntime  # noqa: F401  (the test environment installs every extra; missing is a failure)
import openvino  # noqa: F401  (the test environment installs every extra; missing is a failure)

from edgeba import export  # noqa: E402
from edgeba.manifest import DEFAULT_DIR, load_manifest  # noqa: E402

SUBSET = 30  # first 30 cases of split_cases('val')
INT8 = ("tflite-int8", "openvino-int8", "onnx-int8")


@pytest.fixture(scope="module")
def report():
    return export.parity(DEFAULT_DIR, split="val", limit=SUBSET, threads=1)


def test_default_model_ships_every_runtime_and_verifies():
    m = load_manifest()  # the shipped default
    for stage in ("segment", "regress"):
        assert set(m.formats(stage)) == set(export.SHIPPED_FORMATS)
        for fmt in export.SHIPPED_FORMATS:
            m.files(stage, fmt)  # sha256 check
    tflite = sum(m.data["stages"][s]["tflite-int8"]["bytes"] for s in ("segment", "regress"))
    assert tflite <= 4 * 2**20, f"default TFLite pair is {tflite / 2**20:.2f} MiB"
    cal = m.data["calibration"]
    assert cal["split"] == "train" and cal["n_images"] >= 200


def test_regressor_int8_matches_float(report):
    assert report["n_images"] == SUBSET
    for fmt in INT8:
        r = report["regress"][fmt]
        assert r["mae_delta"] <= 0.25, (fmt, r)
        assert r["p95_abs_diff"] <= 1.5, (fmt, r)


def test_unet_int8_masks_match_float(report):
    for fmt in INT8:
        assert report["segment"][fmt]["mean_iou"] >= 0.97, (fmt, report["segment"][fmt])


def test_end_to_end_int8_drift(report):
    for fam in ("tflite", "openvino", "onnx"):
        e = report["e2e"][fam]
        assert e["formats"] == {"segment": f"{fam}-int8", "regress": f"{fam}-int8"}
        assert abs(e["mae_delta"]) <= 0.3, (fam, e)
