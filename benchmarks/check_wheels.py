"""Does `pip install edgeba[...]` resolve to binary wheels on the 64-bit ARM boards our users name?

    python benchmarks/check_wheels.py        # needs network access to PyPI; prints a Markdown table

For each board (its OS's glibc and system Python) and each install that should work there (the base
runtime and the runtime extras), asks pip to resolve edgeba's whole dependency set from
pyproject.toml for that platform (`pip install --dry-run --only-binary=:all: --platform ...
--python-version ...`), exactly as `pip install edgeba[extra]` on the board would, and prints what
it picks for the compiled packages. Nothing is downloaded beyond pip's metadata. Not a CI test: it
needs PyPI (tests/test_check_wheels.py checks the table offline). Its output is recorded in
benchmarks/README.md. Exit status 1 when some install does not resolve on some board.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# (name, Python the OS ships, glibc minor version): what pip on that board sees.
BOARDS = (
    ("Raspberry Pi OS 12 Bookworm, 64-bit (Pi 4/5)", "3.11", 36),
    ("Raspberry Pi OS 13 Trixie, 64-bit (Pi 4/5)", "3.13", 41),
    ("Jetson JetPack 6 (Ubuntu 22.04)", "3.10", 35),
)
# The installs of the edge guide (benchmarks/README.md): `pip install edgeba` and the one with every
# runtime; [train] (TensorFlow, x86 only) and [dev] are not for boards.
INSTALLS = ("base", "onnx,openvino")
# Compiled packages whose wheel is shown (pure-Python ones install anywhere).
SHOWN = ("numpy", "opencv-python-headless", "psutil", "ai-edge-litert", "onnxruntime", "onnx", "openvino", "protobuf")


def requirements(install: str) -> list[str]:
    """The requirement strings of edgeba's base install plus the extras named in `install` ("a,b")."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = [] if install == "base" else install.split(",")
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def re_name(name: str) -> str:
    """A distribution name as PEP 503 normalises it (ai_edge_litert -> ai-edge-litert)."""
    return "-".join(name.lower().replace("_", "-").replace(".", "-").split("-"))


def pip_args(python: str, glibc: int) -> list[str]:
    """pip's platform options for an aarch64 board: every manylinux tag its glibc accepts."""
    abi = "cp" + python.replace(".", "")
    platforms = [a for i in range(17, glibc + 1) for a in ("--platform", f"manylinux_2_{i}_aarch64")]
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none", *platforms, "--platform", "manylinux2014_aarch64"]


def resolve(reqs: list[str], python: str, glibc: int) -> tuple[dict[str, str] | None, str]:
    """({name: wheel file} of the whole resolved set, "") or (None, pip's first error line)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--report", str(report), "--target", str(Path(tmp) / "t"), *pip_args(python, glibc), *reqs]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            errors = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or ["?"]
            # The line naming the requirement that has no wheel, rather than pip's list of ignored versions.
            return None, next((e for e in errors if "No matching distribution" in e), errors[-1])
        items = json.loads(report.read_text())["install"]
        return {re_name(i["metadata"]["name"]): i["download_info"]["url"].rsplit("/", 1)[-1] for i in items}, ""


def short(wheel_file: str) -> str:
    """numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl -> numpy 2.2.6 cp310 glibc>=2.17."""
    name, version, *_, python, _abi, platform = wheel_file[: -len(".whl")].split("-")
    glibc = min((int(m) for m in re.findall(r"manylinux_2_(\d+)", platform)), default=17)  # manylinux2014 = 2.17
    return f"{name.replace('_', '-')} {version} {python} glibc>=2.{glibc}"


def main() -> int:
    print("| board | install | resolves | compiled wheels pip picks |")
    print("|---|---|---|---|")
    failed = 0
    for name, python, glibc in BOARDS:
        for install in INSTALLS:
            picked, error = resolve(requirements(install), python, glibc)
            what = "`pip install edgeba`" if install == "base" else f"`pip install edgeba[{install}]`"
            if picked is None:
                failed += 1
                print(f"| {name}, Python {python}, glibc 2.{glibc} | {what} | **no** | {error} |", flush=True)
                continue
            wheels = ", ".join(short(picked[p]) for p in SHOWN if p in picked)
            print(f"| {name}, Python {python}, glibc 2.{glibc} | {what} | yes | {wheels} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
