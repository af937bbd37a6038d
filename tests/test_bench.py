"""`edgeba bench`: the CI smoke run writes a complete, sane result file; MAC counting is exact.

Benchmarks are not timed tests: nothing here asserts a speed, only that every number a user will
compare between machines is present, finite and in its physical range.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from runtime_fixtures import *  # noqa: F401,F403
from runtime_fixtures import run_cli

from edgeba.bench import machine, measure, worker
from edgeba.bench.measure import needed_stages as bench_stages
from edgeba.manifest import load_manifest


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`edgeba bench --quick` exactly as CI runs it: the shipped default model, a fresh process."""
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("bench", "--quick", "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_quick_run_writes_json_markdown_and_plot(quick_run):
    out, proc = quick_run
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and {p.rsplit(".", 1)[1] for p in files} == {"json", "md", "png"}, files
    assert all(f.endswith("-quick." + f.rsplit(".", 1)[1]) for f in files)
    assert proc.stdout.split() == [str(out / f) for f in sorted(files, key=lambda f: ("json", "md", "png").index(f.rsplit(".", 1)[1]))]
    assert next(out.glob("*.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_result_schema_and_values(quick_run):
    out, _ = quick_run
    r = json.loads(next(out.glob("*.json")).read_text())
    manifest = load_manifest(None)
    assert r["schema"] == measure.SCHEMA and r["quick"] is True
    mach = r["machine"]
    assert mach["cpu"] and mach["arch"] and mach["os"] and mach["libc"] and mach["cores_usable"] >= 1
    assert {"numpy", "ai-edge-litert", "edgeba"} <= set(mach["packages"])
    assert all(math.isfinite(v) and v >= 0 for v in mach["loadavg"]["start"] + mach["loadavg"]["end"])

    threads = [str(t) for t in r["settings"]["threads"]]
    assert threads == [str(measure.default_cores())]  # --quick: all cores only
    assert list(r["formats"]) == measure.runnable_formats(manifest, None)  # every installed backend, every precision
    assert r["reference"] == next(f for f in measure.FLOAT_REFERENCE_ORDER if f in r["formats"])  # Keras when installed
    assert r["auto_format"] in r["formats"]
    assert r["images"]["accuracy"] == 3 and r["images"]["split"] == "val"

    for fmt, x in r["formats"].items():
        assert x["errors"] == [], (fmt, x["errors"])
        assert all(positive(x["size_bytes"][s]) for s in r["stages"] + ["total"]), fmt
        for t in threads:
            lat = x["latency"][t]
            assert lat["formats"]["regress"] == fmt  # the Predictor ran exactly this format
            assert positive(lat["load_ms"]) and positive(lat["load_first_ms"]) and positive(lat["import_ms"]), fmt
            for key in worker.STAGE_KEYS + worker.MODEL_KEYS:
                if key in ("segment", "segment_model") and not manifest.segments:  # no U-Net: 0 ms
                    assert lat[key]["median"] == 0, (fmt, key)
                    continue
                s = lat[key]
                assert positive(s["median"]) and s["p90"] >= s["median"] and s["n"] == r["settings"]["runs"], (fmt, key, s)
            # The INT8 U-Net alone is part of its stage, which adds full-resolution mask post-processing
            # (~8x that model here). Not for Keras (its eager U-Net call is as slow as the post-processing,
            # so 3-run medians order at random) nor the regressor (one view: its stage is the model call).
            if manifest.segments and fmt.endswith("int8"):
                assert lat["segment_model"]["median"] < lat["segment"]["median"], (fmt, lat["segment_model"], lat["segment"])
        cs = x["cold_start"]
        assert positive(cs["wall_s"]["median"]) and cs["wall_s"]["median"] > lat["total"]["median"] / 1e3
        assert cs["first_run_s"] is None  # --quick measures the first run itself
        assert 20 < cs["peak_rss_mb"] < 8000 and math.isfinite(cs["bone_age_months"])
        a = x["accuracy"]
        assert a["n"] + a["failed"] == 3 and math.isfinite(a["mae"]) and a["mae"] >= 0
        if fmt == r["reference"]:
            assert a["reference"] is True
        else:
            assert not manifest.segments or 0 <= a["mask_iou"]["min"] <= a["mask_iou"]["mean"] <= 1
            for k in ("regress_drift_months", "e2e_drift_months"):
                assert 0 <= a[k]["mean"] <= a[k]["max"] and math.isfinite(a[k]["max"])

    d = r["derived"]
    g, views = r["gmac"], d["pipeline_gmac"]["tta_views"]
    assert set(g) == set(r["stages"]) == set(bench_stages(manifest)) and all(positive(v["gmac"]) for v in g.values())
    assert views >= 1 and all(lat["tta_views"] == views for x in r["formats"].values() for lat in x["latency"].values())
    # The U-Net counted as often as the median prediction ran it (as stored and upside down at least).
    passes = d["pipeline_gmac"]["unet_passes"]
    assert passes == next(lat["unet_passes"]["median"] for x in r["formats"].values() for lat in x["latency"].values())
    assert passes >= (2 if "segment" in g else 0)
    assert d["pipeline_gmac"]["gmac"] == pytest.approx(passes * g.get("segment", {"gmac": 0})["gmac"] + views * g["regress"]["gmac"])
    assert all(positive(p["gmac_per_s"]) for p in r["peak"].values())
    assert positive(d["floor"][threads[0]]["floor_ms"])
    assert [t["limit"] for t in d["targets"]] == list(measure.TARGETS.values())
    for t in d["targets"]:  # the speed targets are stated at 1 thread, which --quick does not run; batch scaling needs 2 cores
        unmeasured = t["name"].endswith("1 thread") or (t["name"].startswith("batch") and measure.default_cores() == 1)
        assert t["pass"] is None if unmeasured else isinstance(t["pass"], bool), t
    batch = r["throughput"]  # edgeba predict DIR --out at 1 worker and one per core, every image a row
    assert [x["workers"] for x in batch] == sorted({1, measure.default_cores()})
    assert all(x["images"] == r["settings"]["batch_images"] and x["failed"] == 0 and positive(x["images_per_s"])
               and positive(x["steady_images_per_s"]) for x in batch), batch
    md = next(out.glob("*.md")).read_text()
    assert all(f"| {fmt}" in md for fmt in r["formats"]) and "## Targets" in md and "## Batch throughput" in md


def test_tflite_mac_count_is_exact(fixture_model):
    """The fixture's layers by hand (tests/model_fixture.py): regressor Conv 3x3 stride 4 on 64x64x1
    -> 16x16x1, then Dense 2 -> 1; U-Net a 1x1 conv over 64x64x2 (pooling and upsampling are free)."""
    m = load_manifest(fixture_model)
    assert machine.tflite_gmac(m.files("regress", "tflite-int8").path) * 1e9 == pytest.approx(16 * 16 * 9 + 2)
    assert machine.tflite_gmac(m.files("segment", "tflite-int8").path) * 1e9 == pytest.approx(64 * 64 * 2)


def test_bench_module_imports_no_framework():
    """`edgeba bench` must start after `pip install edgeba` on a Pi: TensorFlow only in the keras worker."""
    code = "import sys, edgeba.bench; print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'onnxruntime', 'openvino') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_precise_views_make_every_prediction_average_the_tta_views(fixture_model, good_image, tmp_path):
    """`edgeba bench --precise` measures format views whose manifest asks for TTA, so the latency,
    accuracy and cold-start workers all run what `edgeba predict --precise` runs."""
    from edgeba.predictor import Predictor
    from edgeba.preprocess import TTA_VIEWS

    manifest = load_manifest(fixture_model)
    plain = measure.format_view(manifest, "tflite-int8", tmp_path / "plain")
    precise = measure.format_view(manifest, "tflite-int8", tmp_path / "precise", tta=True)
    assert Predictor(plain, "tflite", 1).predict(good_image, "male").tta_views == 1
    assert Predictor(precise, "tflite", 1).predict(good_image, "male").tta_views == len(TTA_VIEWS)
    assert measure.Settings(True, [1], None, precise=True).as_dict()["precise"] is True
