"""`edgeba bench`: size, load time, cold start, latency per stage, peak memory, accuracy and INT8 drift
of every installed backend and precision, on this machine, into JSON + Markdown + PNG.

    worker.py   the measurements, each in a fresh process (threads fixed at start-up, like a user's predict)
    measure.py  the run: formats, workers, cold starts, derived ratios / compute floor / targets
    machine.py  the machine description and the models' size and GMAC
    report.py   Markdown and PNG from the result dict

Nothing here imports a runtime at import time, so `edgeba bench` works after a plain
`pip install edgeba` on a Raspberry Pi; TensorFlow is imported only by the Keras worker.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import tempfile
from pathlib import Path

from edgeba.backends import BACKENDS
from edgeba.bench.machine import describe
from edgeba.bench.measure import Log, Settings, benchmark, default_cores, derive
from edgeba.bench.report import markdown, plot
from edgeba.manifest import FORMATS


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgeba bench", description="Benchmark every installed backend and precision on this machine.")
    p.add_argument("--quick", action="store_true", help="a smoke run of every code path (a few images and runs), for CI")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON, Markdown and PNG")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    p.add_argument("--formats", nargs="+", default=None, metavar="FORMAT",
                   help=f"formats or backends to run (default: all installed): {', '.join(FORMATS)}")
    p.add_argument("--val", type=int, default=None, metavar="N", help="accuracy on the first N val images (default: all; --quick: 3)")
    p.add_argument("--precise", action="store_true", help="measure `edgeba predict --precise` (5 test-time views per image)")
    a = p.parse_args(argv)
    if a.formats:
        unknown = [f for f in a.formats if f not in FORMATS and f not in BACKENDS]
        if unknown:
            p.error(f"unknown formats {unknown}")
        a.formats = [f for f in FORMATS if f in a.formats or f.split("-")[0] in a.formats]
    if a.threads and min(a.threads) < 1 or a.val is not None and a.val < 1:
        p.error("--threads and --val must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    """`edgeba bench ARGS`: writes OUT/<arch>-<time>[-quick].{json,md,png}; 0 when every format ran cleanly."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    cores = default_cores()
    # --quick: all cores only (the 1-thread path is the same code; CI time is short)
    settings = Settings(a.quick, sorted(set(a.threads or ([cores] if a.quick else [1, cores]))), a.val, a.precise)
    log = Log()
    with tempfile.TemporaryDirectory(prefix="edgeba-bench-") as work:
        r = benchmark(a.model, settings, a.formats, Path(work), log)
    r["command"] = " ".join(["edgeba bench", *argv])
    r["machine"] = describe() | {"loadavg": log.summary()}
    r["derived"] = derive(r)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{platform.machine()}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}{'-precise' if a.precise else ''}{'-quick' if a.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if plot(r, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    else:
        log("no plot: matplotlib is not installed")
    print("\n".join(map(str, written)))
    errors = sum(len(x["errors"]) for x in r["formats"].values())
    log(f"done, {errors} error(s)")
    return 1 if errors else 0
