"""Measure INT8 (and FP32) parity of a model directory against its float Keras models.

    python export/parity.py --model edgeba/models/default --split val --out export/parity_val.json [--manifest]

--manifest also records the summary under metrics.parity in the model's manifest.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeba import export


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--formats", help="comma list (default: every format in the manifest); keras is always the reference")
    p.add_argument("--manifest", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    formats = a.formats.split(",") if a.formats else None
    report = export.parity(a.model, a.split, a.limit, a.threads, formats=formats, progress=True)
    report["seconds"] = round(time.time() - t0, 1)
    report["command"] = "python export/parity.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    if a.manifest:
        m = export.load_manifest(a.model)
        m["metrics"]["parity"] = {k: report[k] for k in ("split", "n_images", "float_mae", "segment", "regress", "e2e", "pass")}
        export.write_manifest(a.model, m)
    print(json.dumps(report["pass"], indent=1))
    return report


if __name__ == "__main__":
    main()
