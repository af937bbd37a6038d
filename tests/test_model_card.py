"""export/model_card.py: the commands a model card prints must rebuild the run, caches included."""

from __future__ import annotations

import json

from scripts import load_script


def test_provenance_replays_a_mixed_fine_tune_and_names_both_caches(tmp_path):
    from edgeba.preprocess import PreprocessConfig
    from edgeba.training.regressor import RegressorConfig

    mc = load_script("export/model_card.py")
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    for d in (pre, ft):
        d.mkdir()
    base = RegressorConfig(preprocess=PreprocessConfig(segment=False)).to_dict()
    (pre / "config.json").write_text(json.dumps({**base, "cache": "cache/lowres.npz", "init_from": None, "backend": "jax"}))
    ft_conf = {**base, "cache": "cache/full.npz", "init_from": str(pre / "regressor.keras"), "backend": "tensorflow",
               "warmup_epochs": 1.0, "mix_cache": "cache/mix.npz", "mix_per_batch": 8, "epochs": 10, "lr": 2e-4}
    (ft / "config.json").write_text(json.dumps(ft_conf))
    commands = mc.provenance(ft)
    assert len(commands) == 2 and "--cache cache/lowres.npz" in commands[0]
    last = commands[1]
    for flag in ("--cache cache/full.npz", f"--init-from {pre / 'regressor.keras'}", "--warmup-epochs 1",
                 "--mix-cache cache/mix.npz --mix-per-batch 8", "--epochs 10", "--lr 0.0002", "--no-segment"):
        assert flag in last, flag
    builds = mc.cache_commands(commands)
    assert len(builds) == 3 and all("not recorded" in b for b in builds)  # the caches are not on disk here
    assert [b.split(":")[0] for b in builds] == ["# cache/lowres.npz", "# cache/full.npz", "# cache/mix.npz"]


def test_replayed_command_parses_back_to_the_run_config():
    """train_command is the inverse of the trainer's command line: every non-default setting survives."""
    import shlex

    from edgeba.preprocess import PreprocessConfig
    from edgeba.training.regressor import RegressorConfig, parse_args

    mc = load_script("export/model_card.py")
    cfg = RegressorConfig(preprocess=PreprocessConfig(input_size=192, segment=False, enhance=False), sex_input=False,
                          epochs=10, lr=2e-4, patience=7, seed=3, loss="huber", warmup_epochs=1.0, time_budget_s=60.0,
                          mix_cache="cache/mix.npz", mix_per_batch=8, soft_targets="t.csv", soft_weight=0.5, fit_tune=True)
    conf = {**cfg.to_dict(), "cache": "cache/c.npz", "init_from": "runs/pre/regressor.keras", "backend": "tensorflow"}
    line = mc.train_command("runs/x", conf).split("#")[0]
    args, parsed = parse_args(shlex.split(line)[3:])  # after "python -m edgeba.training.regressor"
    assert parsed == cfg
    assert str(args.cache) == "cache/c.npz" and str(args.init_from) == "runs/pre/regressor.keras"


def test_cache_commands_fall_back_to_what_the_runs_recorded(tmp_path):
    """A card made where the caches are gone prints the build commands the training runs recorded."""
    mc = load_script("export/model_card.py")
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    for d in (pre, ft):
        d.mkdir()
    (pre / "config.json").write_text(json.dumps({"cache_commands": {"cache/low.npz": "python -m edgeba.training.crops --out cache/low.npz --lowres"}}))
    (ft / "config.json").write_text(json.dumps({"init_from": str(pre / "regressor.keras"), "cache_commands": {"cache/full.npz": ""}}))
    recorded = mc.recorded_cache_commands(ft)
    assert recorded == {"cache/low.npz": "python -m edgeba.training.crops --out cache/low.npz --lowres"}
    builds = mc.cache_commands(["x --cache cache/low.npz", "y --cache cache/full.npz"], recorded)
    assert builds[0].endswith("--lowres") and "not recorded" in builds[1]
