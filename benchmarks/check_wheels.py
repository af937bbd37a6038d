"""Do binary wheels for 64-bit ARM boards exist for the versions benchmarked here?

    python benchmarks/check_wheels.py        # needs network access to PyPI; prints a Markdown table

For each target (OS glibc + its Python) and each package with compiled code that `edgeba predict`
needs, asks pip which wheel it would install on that platform, first for the exact version installed
in this environment, then (if none) for any version. Nothing is downloaded beyond pip's metadata.
Not a CI test: it needs PyPI. Its output is recorded in benchmarks/README.md.
Exit status 1 when some package has no aarch64 wheel at all for some target.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# (name, Python the OS ships, glibc minor version): what pip on that board would see.
TARGETS = (
    ("Raspberry Pi OS 12 Bookworm, 64-bit (Pi 4/5)", "3.11", 36),
    ("Raspberry Pi OS 13 Trixie, 64-bit (Pi 4/5)", "3.13", 41),
    ("Jetson JetPack 6 (Ubuntu 22.04)", "3.10", 35),
)
# The compiled dependencies of the runtime (pure-Python ones install anywhere).
PACKAGES = ("numpy", "opencv-python-headless", "psutil", "ai-edge-litert", "onnxruntime", "openvino")


def wheel(package: str, version: str | None, python: str, glibc: int) -> str | None:
    """The wheel file pip would pick for `package[==version]` on aarch64 with that glibc and Python."""
    abi = "cp" + python.replace(".", "")
    platforms = [a for i in range(17, glibc + 1) for a in ("--platform", f"manylinux_2_{i}_aarch64")]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), "--no-deps",
               "--ignore-installed", "--only-binary=:all:", "--target", str(Path(tmp) / "t"), "--python-version", python,
               "--implementation", "cp", "--abi", abi, "--abi", "abi3", *platforms, "--platform", "manylinux2014_aarch64",
               f"{package}=={version}" if version else package]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return None
        items = json.loads(report.read_text())["install"]
        return items[0]["download_info"]["url"].rsplit("/", 1)[-1] if items else None


def main() -> int:
    print("| target | package | version here | aarch64 wheel pip picks |")
    print("|---|---|---|---|")
    missing = 0
    for name, python, glibc in TARGETS:
        for pkg in PACKAGES:
            version = metadata.version(pkg)
            found = wheel(pkg, version, python, glibc)
            if found is None:
                newest = wheel(pkg, None, python, glibc)
                found = f"none for {version}; newest compatible: {newest}" if newest else "**none at all**"
                missing += newest is None
            print(f"| {name}, Python {python}, glibc 2.{glibc} | {pkg} | {version} | {found} |", flush=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
