"""Many radiographs -> one results CSV, written row by row so no finished work is ever lost.

The CSV holds exactly one row per input file however often the command is rerun:
- a rerun keeps every successful row and redoes only the files without one (errors are retried);
- each row is flushed and fsync'ed as soon as it is known, so a run killed even by SIGKILL leaves a
  readable file with every finished row (at worst a partial last line, which the next run drops);
- the file is rewritten (for dropped error rows) through a temporary file and an atomic rename.

With `workers` > 1 a pool of processes predicts (each opens its own Predictor once, with its share
of the cores), so one image's decoding and mask work overlap another's inference; only this process
writes the file, one row per result in the order they finish.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from edgeba.errors import InputError, SegmentationError

FIELDS = (
    "file", "status", "bone_age_months", "bone_age", "sex", "sex_source", "chronological_age_months",
    "bone_minus_chronological_months", "interval_lo_months", "interval_hi_months", "inverted", "backend", "model",
    "tta_views", "mask_ok", "total_ms", "warnings", "error",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


@dataclass
class BatchSummary:
    total: int
    done: int  # predicted in this run
    skipped: int  # already successful in the results file
    failed: int

    @property
    def ok(self) -> bool:
        return self.failed == 0


def expand(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files to process, as absolute paths, each once: folders contribute their images (recursively,
    sorted; DICOM files often have no suffix, so files without one count too); a path that does not
    exist stays in the list and becomes an error row."""
    out: dict[str, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and (f.suffix.lower() in IMAGE_SUFFIXES or not f.suffix):
                    out[os.path.abspath(f)] = None
        else:
            out[os.path.abspath(p)] = None
    return list(out)


def _line(row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n").writerow({k: row.get(k, "") for k in FIELDS})
    return buf.getvalue()


def read_results(path: Path) -> list[dict]:
    """Rows of an existing results file, without a partial last line left by a killed run."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the existing results file ({type(exc).__name__})") from None
    if not text:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the row being written when the run was killed
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != FIELDS:
        raise InputError(f"{path}: exists and is not an edgeba results file (or is one from another edgeba version, with other columns); choose another --out")
    return [r for r in reader if r.get("file") and r.get("status") in ("ok", "error")]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rewrite(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(FIELDS) + "\n")
        for r in rows:
            f.write(_line(r))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _ok_row(file: str, pred) -> dict:
    j = pred.to_json()
    return {
        **{k: j.get(k) for k in ("bone_age_months", "bone_age", "sex", "sex_source", "chronological_age_months",
                                 "bone_minus_chronological_months", "backend", "model", "tta_views")},
        "file": file, "status": "ok",
        "mask_ok": "" if pred.mask_quality is None else int(pred.mask_quality["ok"]),
        **dict(zip(("interval_lo_months", "interval_hi_months"), pred.interval_months or ("", ""))),
        "inverted": int(pred.inverted),
        "total_ms": j["timings_ms"].get("total"),
        "warnings": " | ".join(pred.warnings),
    }


@dataclass(frozen=True)
class Job:
    """How to predict one file, picklable so that worker processes can run it: the Predictor's
    arguments (each process opens its Predictor once, on its first file) and the per-file options."""

    predictor_kw: dict = field(default_factory=dict)  # edgeba.predictor.Predictor(**predictor_kw)
    sex: str | None = None
    force: bool = False

    def __call__(self, file: str):
        key = repr(sorted(self.predictor_kw.items()))
        if key not in _PREDICTORS:
            from edgeba.predictor import Predictor

            _PREDICTORS[key] = Predictor(**self.predictor_kw)
        return _PREDICTORS[key].predict(file, self.sex, force=self.force)


_PREDICTORS: dict = {}  # this process's Predictors, by their arguments


def _row(predict: Callable[[str], object], file: str) -> dict:
    """The file's CSV row; InputError / SegmentationError are the file's problem (an error row),
    anything else (a ModelError, a bug) propagates and stops the run."""
    try:
        return _ok_row(file, predict(file))
    except (InputError, SegmentationError) as exc:
        return {"file": file, "status": "error", "error": str(exc)}


def _worker_start(threads: int) -> None:
    import cv2

    cv2.setNumThreads(threads)  # OpenCV's own pool would otherwise take every core in every worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # A parent killed with SIGKILL cannot stop its pool: each worker leaves on its own once orphaned,
    # instead of holding a model and memory until someone notices.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent: int, every_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def _rows_in_pool(predict: Job, todo: list[str], workers: int) -> Iterator[dict]:
    """Rows as the workers finish them; at most two files per worker in flight, so a stop (a
    ModelError, Ctrl-C, SIGKILL) leaves little unfinished work behind."""
    threads = predict.predictor_kw.get("threads") or 1
    # spawn, not fork: the runtimes' thread pools do not survive a fork, and spawn is what macOS and
    # Windows do anyway.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_start, initargs=(threads,))
    pending, queue = set(), iter(todo)
    try:
        while True:
            for file in queue:
                pending.add(pool.submit(_row, predict, file))
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def run(
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    predict: Callable[[str], object],
    progress: Callable[[int, int, str], None] | None = None,
    workers: int = 1,
) -> BatchSummary:
    """Predict every input not yet successful in `out`; `predict(file)` returns a Prediction or raises
    InputError / SegmentationError (an error row) or anything else (the run stops). `progress(done, todo, file)` is called once before the first file and after each.
    `workers` > 1 runs `predict` (then a picklable `Job`) in that many processes."""
    out = Path(out)
    if out.exists() and not out.is_file():
        raise InputError(f"{out}: --out must be a file")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    files = expand(inputs)
    if not files:
        raise InputError("no input files found")
    wanted = set(files)
    kept: dict[str, dict] = {}
    for r in read_results(out):
        if r["status"] == "ok" or r["file"] not in wanted:
            kept[r["file"]] = r  # the last row of a file wins, so the file ends with one per file
    _rewrite(out, list(kept.values()))
    todo = [f for f in files if kept.get(f, {}).get("status") != "ok"]
    if progress:
        progress(0, len(todo), "")
    workers = max(1, min(workers, len(todo)))
    rows = (_row(predict, f) for f in todo) if workers == 1 else _rows_in_pool(predict, todo, workers)
    failed = 0
    with open(out, "a", encoding="utf-8", newline="") as f:
        for k, row in enumerate(rows, start=1):
            failed += row["status"] == "error"
            f.write(_line(row))
            f.flush()
            os.fsync(f.fileno())
            if progress:
                progress(k, len(todo), row["file"])
    return BatchSummary(total=len(files), done=len(todo), skipped=len(files) - len(todo), failed=failed)
