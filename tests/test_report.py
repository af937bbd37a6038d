import shutil
from pathlib import Path

from edgeba.training import report

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "train" / "runs" / "regressor" / "relu_sex_enh_noseg_pre_gentle_s0"


def test_report_plots_runs_and_skips_what_has_no_val_predictions(tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / RUN.name
    run.mkdir(parents=True)
    for name in ("metrics.json", "history.csv", "predictions_val.csv", "config.json"):
        shutil.copy(RUN / name, run / name)
    (runs / "SHIPPED.md").write_text("# not a run\n")
    (runs / "pre_lowres").mkdir()  # a pre-training run: no val images
    out = tmp_path / "results"
    report.main([str(runs / "SHIPPED.md"), str(run), str(runs / "pre_lowres"), "--out", str(out)])
    table = (out / "table.md").read_text()
    assert f"| {RUN.name} |" in table and "SHIPPED" not in table and "pre_lowres" not in table
    assert (out / f"{RUN.name}_loss.png").stat().st_size > 0 and (out / f"{RUN.name}_val.png").stat().st_size > 0
    err = capsys.readouterr().err
    assert "skipped" in err and "SHIPPED.md" in err and "pre_lowres" in err
