"""Offline checks of the ARM scripts: check_wheels' board table against pyproject, and the parity verdict.

The scripts' real work needs PyPI, Debian's archive and an emulator (benchmarks/arm64/run.sh), so
it is not run here; these tests hold the parts that can silently drift: which installs and Python
versions the boards get, and when the parity check says OK.
"""

from __future__ import annotations

import json
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from scripts import ROOT, load_script

check_wheels = load_script("benchmarks/check_wheels.py")
parity = load_script("benchmarks/arm64/parity.py")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_board_python_is_supported_and_every_install_exists():
    for name, python, glibc in check_wheels.BOARDS:
        assert python in SpecifierSet(PROJECT["requires-python"]), name
        assert 27 <= glibc  # ai-edge-litert's aarch64 wheels need glibc >= 2.27 (TOOLCHAIN.md)
    for install in check_wheels.INSTALLS:
        reqs = check_wheels.requirements(install)
        assert reqs[: len(PROJECT["dependencies"])] == PROJECT["dependencies"]
        for extra in [] if install == "base" else install.split(","):
            assert set(PROJECT["optional-dependencies"][extra]) <= set(reqs)


def test_platform_tags_stop_at_the_board_glibc():
    args = check_wheels.pip_args("3.10", 35)
    tags = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert "manylinux_2_35_aarch64" in tags and "manylinux_2_36_aarch64" not in tags
    assert args[args.index("--python-version") + 1] == "3.10" and "cp310" in args


def test_onnx_extra_admits_the_jetpack_wheel_and_the_x86_version():
    # onnxruntime 1.32.0 (TOOLCHAIN.md's x86 set) has no cp310 aarch64 wheel; 1.23.2 is the newest
    # that JetPack 6's Python 3.10 gets (check_wheels output in benchmarks/README.md).
    ort = next(Requirement(r) for r in PROJECT["optional-dependencies"]["onnx"] if r.startswith("onnxruntime"))
    assert "1.23.2" in ort.specifier and "1.32.0" in ort.specifier


def test_parity_installs_only_the_runtime_of_each_backend():
    assert parity.requirements("tflite") == PROJECT["dependencies"]
    for backend, package in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        extra = parity.requirements(backend)[len(PROJECT["dependencies"]):]
        assert [Requirement(r).name for r in extra] == [package]


def _run(tmp_path, name, machine, months, qc=None, inputs_differ=0.0):
    rows = [{"id": str(i), "months": m, "qc_ok": True if qc is None else qc[i],
             "digests": dict.fromkeys(parity.STAGES, "same"), "regressor_input_max_diff": inputs_differ,
             "months_on_x86_input": m} for i, m in enumerate(months)]
    path = tmp_path / f"{name}-{machine}.json"
    path.write_text(json.dumps({"backend": name, "formats": {"regress": f"{name}-int8"}, "machine": machine,
                                "model": "m", "versions": {"numpy": "2"}, "rows": rows}))
    return str(path)


def test_parity_verdict_and_figure_last(tmp_path, capsys):
    x86 = _run(tmp_path, "tflite", "x86_64", [100.0, 50.0])
    arm = _run(tmp_path, "tflite", "aarch64", [100.04, 50.0])
    assert parity.compare(0.05, [x86, arm]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("PARITY OK") and "0.0400" in last and "over 2 predictions" in last

    far = _run(tmp_path, "onnx", "aarch64", [100.0, 50.2])
    assert parity.compare(0.05, [x86, arm, _run(tmp_path, "onnx", "x86_64", [100.0, 50.0]), far]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PARITY FAIL (onnx)")


def test_openvino_is_held_to_the_int8_gates_not_to_the_same_months(tmp_path, capsys):
    # OpenVINO's ARM plugin computes INT8 with other kernels: months within the INT8 parity gates pass
    # (mean <= 0.25, max <= 1.5), more does not; the figure stays the same-months backends'.
    tfl = [_run(tmp_path, "tflite", "x86_64", [100.0, 50.0]), _run(tmp_path, "tflite", "aarch64", [100.0, 50.0])]
    near = [_run(tmp_path, "openvino", "x86_64", [100.0, 50.0, 80.0]), _run(tmp_path, "openvino", "aarch64", [100.5, 50.0, 80.1])]
    assert parity.compare(0.05, tfl + near) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("PARITY OK") and "0.0000" in out[-1] and "openvino within the INT8 gates" in out[-1]
    far = [near[0], _run(tmp_path, "openvino", "aarch64", [101.0, 50.0, 80.0])]  # mean 0.33 > 0.25
    assert parity.compare(0.05, tfl + far) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PARITY FAIL (openvino)")
    qc = [near[0], _run(tmp_path, "openvino", "aarch64", [100.0, 50.0, 80.0], qc=[True, False, True])]
    assert parity.compare(0.05, tfl + qc) == 1  # a different mask QC verdict fails it as any backend


def test_parity_fails_when_a_qc_verdict_differs(tmp_path, capsys):
    x86 = _run(tmp_path, "tflite", "x86_64", [100.0, 50.0], qc=[True, True])
    arm = _run(tmp_path, "tflite", "aarch64", [100.0, 50.0], qc=[True, False])
    assert parity.compare(0.05, [x86, arm]) == 1
    assert "verdict differs on 1 (1)" in capsys.readouterr().out


def test_parity_fails_when_a_backend_did_not_finish(tmp_path, capsys):
    x86 = _run(tmp_path, "tflite", "x86_64", [100.0])
    arm = _run(tmp_path, "tflite", "aarch64", [100.0])
    assert parity.main(["compare", "0.05", "--unfinished", "1", x86, arm]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PARITY FAIL (1 unfinished)")
    assert parity.main(["compare", "0.05", "--unfinished", "0", x86, arm]) == 0


def test_parity_fails_with_nothing_compared(capsys):
    assert parity.compare(0.05, []) == 1
    assert capsys.readouterr().out.startswith("PARITY FAIL")


@pytest.mark.parametrize("stage", parity.STAGES)
def test_parity_names_the_first_stage_that_differs(tmp_path, capsys, stage):
    x86 = _run(tmp_path, "tflite", "x86_64", [100.0])
    arm_path = _run(tmp_path, "tflite", "aarch64", [100.0])
    data = json.loads(open(arm_path).read())
    later = parity.STAGES[parity.STAGES.index(stage):]
    data["rows"][0]["digests"].update(dict.fromkeys(later, "other"))
    open(arm_path, "w").write(json.dumps(data))
    parity.compare(0.05, [x86, arm_path])
    assert f"first stage that differs: {stage}: 1" in capsys.readouterr().out


def test_wheel_names_shortened_to_version_python_and_glibc():
    short = check_wheels.short
    assert short("openvino-2026.4.1-22982-cp310-cp310-manylinux_2_35_aarch64.whl") == "openvino 2026.4.1 cp310 glibc>=2.35"
    assert short("numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl") == "numpy 2.2.6 cp310 glibc>=2.17"
    assert short("protobuf-7.36.2-cp310-abi3-manylinux2014_aarch64.whl") == "protobuf 7.36.2 cp310 glibc>=2.17"
