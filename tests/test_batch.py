"""Batch prediction into a CSV: one row per input file across reruns, error rows, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from runtime_fixtures import *  # noqa: F401,F403
from runtime_fixtures import GOOD_IDS, run_cli

from edgeba.batch import FIELDS, expand, read_results
from edgeba.dataset import rsna_root


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in GOOD_IDS:
        os.symlink(rsna_root() / "train" / f"{i}.jpg", d / f"{i}.jpg")
    (d / "broken.png").write_bytes(b"not a png at all")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def test_batch_writes_one_row_per_file_and_resumes(fixture_model, folder, tmp_path):
    out = tmp_path / "results.csv"
    cmd = ("predict", folder, "--out", out, "--sex", "male", "--model", fixture_model)
    proc = run_cli(*cmd)
    assert proc.returncode == 1, proc.stderr  # one bad file
    first = {r["file"]: r for r in rows(out)}
    assert len(first) == len(GOOD_IDS) + 1 and tuple(rows(out)[0]) == FIELDS
    bad = first[str(folder / "broken.png")]
    assert bad["status"] == "error" and "not a readable image" in bad["error"]
    for i in GOOD_IDS:
        r = first[str(folder / f"{i}.jpg")]
        assert r["status"] == "ok" and 0 < float(r["bone_age_months"]) < 240 and r["sex"] == "male" and r["mask_ok"] == "1"
    assert f"{len(GOOD_IDS) + 1} files: {len(GOOD_IDS) + 1} processed, 0 already done, 1 failed" in proc.stdout

    proc = run_cli(*cmd)  # rerun: successes skipped, the error retried, still one row per file
    assert proc.returncode == 1 and "1 processed, 2 already done, 1 failed" in proc.stdout
    again = rows(out)
    assert len(again) == len(first) and {r["file"]: r for r in again if r["status"] == "ok"} == {
        f: r for f, r in first.items() if r["status"] == "ok"}

    shutil.copy(rsna_root() / "train" / f"{GOOD_IDS[0]}.jpg", folder / "broken.png")  # the user fixes the file
    proc = run_cli(*cmd, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"out": str(out), "files": 3, "predicted": 1, "skipped": 2, "failed": 0}
    final = rows(out)
    assert len(final) == 3 and all(r["status"] == "ok" for r in final)


def test_batch_keeps_rows_of_other_inputs_and_reports_missing_files(fixture_model, folder, tmp_path):
    out = tmp_path / "results.csv"
    one = folder / f"{GOOD_IDS[0]}.jpg"
    assert run_cli("predict", one, "--out", out, "--sex", "male", "--model", fixture_model).returncode == 0
    proc = run_cli("predict", folder / f"{GOOD_IDS[1]}.jpg", tmp_path / "gone.jpg", "--out", out, "--sex", "female", "--model", fixture_model)
    assert proc.returncode == 1
    by_file = {r["file"]: r for r in rows(out)}
    assert len(by_file) == 3 and len(rows(out)) == 3
    assert by_file[str(one)]["sex"] == "male" and by_file[str(folder / f"{GOOD_IDS[1]}.jpg")]["sex"] == "female"
    assert "file not found" in by_file[str(tmp_path / "gone.jpg")]["error"]


def test_batch_without_sex_gives_error_rows(fixture_model, folder, tmp_path):
    out = tmp_path / "r.csv"
    assert run_cli("predict", folder, "--out", out, "--model", fixture_model).returncode == 1
    errors = [r["error"] for r in rows(out) if "broken" not in r["file"]]
    assert len(errors) == len(GOOD_IDS) and all("needs the patient's sex" in e for e in errors)


def test_batch_refuses_to_overwrite_a_foreign_file(fixture_model, folder, tmp_path):
    out = tmp_path / "precious.csv"
    out.write_text("name,value\na,1\n")
    proc = run_cli("predict", folder, "--out", out, "--sex", "male", "--model", fixture_model)
    assert proc.returncode == 1 and "not an edgeba results file" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == "name,value\na,1\n"


def test_batch_usage_errors(fixture_model, folder, tmp_path):
    proc = run_cli("predict", folder, "--out", tmp_path / "r.csv", "--overlay", tmp_path / "o.png", "--sex", "male")
    assert proc.returncode == 2 and "--overlay works on a single image" in proc.stderr
    proc = run_cli("predict", folder, "--out", tmp_path / "no" / "r.csv", "--sex", "male", "--model", fixture_model)
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_partial_last_line_is_dropped(tmp_path):
    out = tmp_path / "r.csv"
    out.write_text(",".join(FIELDS) + "\n/a.png,ok,100.0" + "," * (len(FIELDS) - 3) + "\n/b.png,ok,12")
    got = read_results(out)
    assert [r["file"] for r in got] == ["/a.png"]


def test_expand_dedupes_and_recurses(folder, tmp_path):
    (folder / "sub").mkdir()
    (folder / "sub" / "scan").write_bytes(b"DICOM without a suffix")
    files = expand([folder, folder / f"{GOOD_IDS[0]}.jpg", tmp_path / "missing.png"])
    names = [os.path.basename(f) for f in files]
    assert names.count(f"{GOOD_IDS[0]}.jpg") == 1 and "scan" in names and "notes.txt" not in names
    assert "missing.png" in names


def test_sigkill_midway_leaves_a_readable_file_and_resumes(fixture_model, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    n = 80
    for k in range(n):
        os.symlink(rsna_root() / "train" / f"{GOOD_IDS[k % len(GOOD_IDS)]}.jpg", src / f"img{k:03d}.jpg")
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "edgeba.cli", "predict", str(src), "--out", str(out), "--sex", "male",
           "--model", str(fixture_model), "--backend", "tflite", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the batch should run in worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)  # orphaned workers leave on their own
    assert not alive, f"workers outlived their killed parent: {[p.pid for p in alive]}"
    done = rows(out)  # readable: every complete row parses with every column
    assert 5 <= len(done) < n, "the run should have been killed midway"
    assert all(r["status"] == "ok" and r["bone_age_months"] for r in done[:-1])
    finished = len(read_results(out))
    again = run_cli(*cmd[3:], timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{n} files: {n - finished} processed, {finished} already done, 0 failed" in again.stdout
    final = rows(out)
    assert len(final) == n and len({r["file"] for r in final}) == n and all(r["status"] == "ok" for r in final)


def test_model_error_stops_the_batch_instead_of_filling_error_rows(folder, tmp_path):
    out = tmp_path / "r.csv"
    proc = run_cli("predict", folder, "--out", out, "--sex", "male", "--model", tmp_path)
    assert proc.returncode == 1 and "not a model directory" in proc.stderr and "Traceback" not in proc.stderr
    assert rows(out) == []


def test_workers_write_the_same_rows_as_one_process(fixture_model, folder, tmp_path):
    """--workers 2: a process pool, rows in completion order; every row equal to the one-process run's
    (times aside), and the summary line the same."""
    for k in range(4):  # more files than workers, so each worker predicts several
        os.symlink(rsna_root() / "train" / f"{GOOD_IDS[k % 2]}.jpg", folder / f"copy{k}.jpg")
    got = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}.csv"
        proc = run_cli("predict", folder, "--out", out, "--sex", "female", "--model", fixture_model, "--workers", w, "--backend", "tflite")
        assert proc.returncode == 1 and "7 files: 7 processed, 0 already done, 1 failed" in proc.stdout, proc.stderr
        got[w] = {r["file"]: {k: v for k, v in r.items() if k != "total_ms"} for r in rows(out)}
    assert len(got[2]) == 7 and got[1] == got[2]


def test_job_is_picklable_and_opens_its_predictor_once(fixture_model, good_image):
    import pickle

    from edgeba import batch

    job = pickle.loads(pickle.dumps(batch.Job({"model_dir": fixture_model, "backend": "tflite", "threads": 1}, "male", False)))
    before = len(batch._PREDICTORS)
    a = job(str(good_image))
    opened = dict(batch._PREDICTORS)
    b = job(str(good_image))
    assert len(opened) == before + 1 and batch._PREDICTORS == opened and a.bone_age_months == b.bone_age_months
