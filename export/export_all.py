"""Export the float models to every format (thin wrapper over edgeba.export.main; `edgeba export` is the same).

    python export/export_all.py --unet train/runs/unet/unet.keras --regressor train/runs/RUN/regressor.keras \
        --out edgeba/models/default --formats shipped
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeba import export


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", type=Path, required=True)
    p.add_argument("--regressor", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, help="the regressor run's config.json (default: next to --regressor)")
    p.add_argument("--formats", default="all", help="all, shipped, or a comma list of " + ",".join(export.FORMATS))
    p.add_argument("--n-calib", type=int, default=export.N_CALIB)
    p.add_argument("--name", default="edgeba-default")
    a = p.parse_args(argv)
    formats = {"all": export.FORMATS, "shipped": export.SHIPPED_FORMATS}.get(a.formats) or tuple(a.formats.split(","))
    manifest = export.main(a.unet, a.regressor, a.out, config=a.config, formats=formats, n_calib=a.n_calib, name=a.name)
    print(json.dumps({st: {f: e["bytes"] for f, e in fs.items()} for st, fs in manifest["stages"].items()}, indent=1))
    return manifest


if __name__ == "__main__":
    main()
