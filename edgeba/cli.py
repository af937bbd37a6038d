"""The `edgeba` command: one thin command per lifecycle stage (predict, evaluate, info, train, export, bench, serve).

Start-up time matters on a Raspberry Pi, so this module imports only typer at the top; each command
imports what it needs. Every expected failure is one line on stderr and a non-zero exit code:
1 = the input, model or a batch item failed; 2 = wrong usage; 3 = a bug (please report it).
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="edgeba",
    help="Bone age (months) from a left-hand radiograph, with INT8 models on clinic hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts mention extras like [train]; print them literally
)


class Sex(str, Enum):
    male = "male"
    female = "female"


class Backend(str, Enum):
    auto = "auto"
    tflite = "tflite"
    openvino = "openvino"
    onnx = "onnx"
    keras = "keras"


def _dumps(obj, **kw) -> str:
    """JSON that tolerates numpy scalars and arrays in metrics dicts."""
    return json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o), **kw)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"edgeba: error: {message}", err=True)
    raise typer.Exit(code)


def _guarded(fn):
    """Turn every exception into one line and an exit code; EDGEBA_DEBUG=1 shows the traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgeba.errors import EdgebaError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except EdgebaError as exc:
            _fail(str(exc).replace("\n", " "))
        except FileNotFoundError as exc:  # e.g. the RSNA data for bench/train: the environment, not a bug
            _fail(str(exc).splitlines()[0] if str(exc) else "file not found")
        except BrokenPipeError:  # `edgeba info | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory (is the image absurdly large?)")
        except Exception as exc:  # a bug: still one line, with a way to get the details
            if os.environ.get("EDGEBA_DEBUG"):
                raise
            msg = (str(exc).strip().splitlines() or [""])[0][:200]
            _fail(f"internal error: {type(exc).__name__}: {msg} (rerun with EDGEBA_DEBUG=1 for details)", 3)

    return wrapper


def _predictor(model: Optional[Path], backend: Backend, threads: Optional[int], precise: bool = False, images: int = 1):
    from edgeba.predictor import Predictor

    return Predictor(model, backend.value, threads, tta=True if precise else None, images=images)


PRECISE_HELP = ("Average 5 views of the hand (scale +-5 %, rotation +-4 degrees): 5x the regressor's compute, "
                "a lower error on the validation split (see the model card).")


def _print_prediction(pred, load_ms: float) -> None:
    from edgeba.regress import years_months

    t = pred.timings_ms
    sex = f"sex {pred.sex} (from {'--sex' if pred.sex_source == 'argument' else 'DICOM header'})" if pred.sex else "sex not used"
    typer.echo(f"{Path(pred.file).name}: bone age {pred.bone_age_months:.1f} months ({years_months(pred.bone_age_months)})")
    if pred.interval_months is not None:
        lo, hi = pred.interval_months
        typer.echo(f"  90 % prediction interval {lo:.0f}-{hi:.0f} months ({years_months(lo)} to {years_months(hi)})")
    if pred.chronological_age_months is not None:
        d = pred.bone_minus_chronological_months
        typer.echo(f"  chronological age {pred.chronological_age_months:.1f} months (from DICOM); bone age - chronological age = {d:+.1f} months")
    views = f"; {pred.tta_views} views averaged" if pred.tta_views > 1 else ""
    typer.echo(f"  {sex}; backend {pred.backend}; model {pred.model}{views}; {t['total']:.0f} ms (+{load_ms:.0f} ms model load)")
    for w in pred.warnings:
        typer.echo(f"  warning: {w}", err=True)


def _batch(inputs: list[str], out: Path, pred_kw: dict, sex, force: bool, as_json: bool, workers: Optional[int]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgeba import batch
    from edgeba.backends import default_threads

    cores = default_threads()
    workers = workers or cores
    # Each worker gets its share of the cores (unless --threads says otherwise): N processes each with
    # all the cores would fight over them.
    threads = pred_kw["threads"] or (None if workers == 1 else max(1, cores // workers))
    files = len(batch.expand(inputs))
    job = batch.Job({"model_dir": pred_kw["model"], "backend": pred_kw["backend"].value, "threads": threads,
                     "tta": True if pred_kw["precise"] else None, "images": -(-files // workers)}, sex, force)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=_stderr_console()) as bar:
        task = bar.add_task("predicting", total=None, rate="")

        def progress(done: int, todo: int, file: str) -> None:
            speed = bar.tasks[0].speed  # rich's own moving estimate, in files per second
            bar.update(task, completed=done, total=todo, description=Path(file).name if file else "predicting",
                       rate=f"{speed:.1f} img/s" if speed else "")

        summary = batch.run(inputs, out, job, progress, workers)
    result = {"out": str(out), "files": summary.total, "predicted": summary.done, "skipped": summary.skipped, "failed": summary.failed}
    if as_json:
        typer.echo(_dumps(result))
    else:
        typer.echo(f"{summary.total} files: {summary.done} processed, {summary.skipped} already done, {summary.failed} failed -> {out}")
    if summary.failed:
        raise typer.Exit(1)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@app.command()
@_guarded
def predict(
    inputs: list[str] = typer.Argument(..., metavar="IMAGE", help="Radiograph (PNG/JPEG/TIFF/DICOM); several files or folders need --out.", show_default=False),
    sex: Optional[Sex] = typer.Option(None, "--sex", case_sensitive=False, help="Patient sex; else taken from the DICOM header. Never assumed."),
    backend: Backend = typer.Option(Backend.auto, "--backend", case_sensitive=False, help="Runtime; auto = the installed one measured fastest here for this many images, start-up included."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory with manifest.json (default: the shipped INT8 model)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all available)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Write a PNG with the hand outline and crop box (visual QC)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Batch mode: results CSV, one row per file, resumable."),
    force: bool = typer.Option(False, "--force", help="Report a number even when segmentation fails QC (with a warning)."),
    precise: bool = typer.Option(False, "--precise", help=PRECISE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Batch mode: processes predicting in parallel (default: one per core)."),
) -> None:
    """Predict bone age for one radiograph, or for many into a CSV (--out)."""
    sex_value = sex.value if sex else None
    pred_kw = {"model": model, "backend": backend, "threads": threads, "precise": precise}
    if out is not None or len(inputs) > 1 or Path(inputs[0]).is_dir():
        if out is None:
            _fail("several inputs or a folder: pass --out results.csv for the batch results", 2)
        if overlay is not None:
            _fail("--overlay works on a single image, not in batch mode", 2)
        _batch(inputs, out, pred_kw, sex_value, force, as_json, workers)
        return
    predictor = _predictor(**pred_kw)
    pred = predictor.predict(inputs[0], sex_value, force=force)
    if overlay is not None:
        from edgeba import overlay as qc

        label = f"{pred.bone_age_months:.0f} months" + ("" if not pred.warnings else " (see warnings)")
        qc.write(overlay, qc.draw(pred.radiograph.pixels, pred.mask, predictor.crop_margin, label, predictor.crops))
    if as_json:
        j = pred.to_json()
        j["formats"] = predictor.formats
        j["timings_ms"]["model_load"] = round(predictor.load_ms, 2)
        typer.echo(_dumps(j))
    else:
        _print_prediction(pred, predictor.load_ms)


@app.command()
@_guarded
def evaluate(
    images_dir: Path = typer.Argument(..., help="Folder with the images, named <id>.<ext>."),
    labels_csv: Path = typer.Argument(..., help="CSV with columns id,boneage_months,male."),
    backend: Backend = typer.Option(Backend.auto, "--backend", case_sensitive=False),
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory (default: the shipped model)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    precise: bool = typer.Option(False, "--precise", help=PRECISE_HELP),
) -> None:
    """Thesis metrics (MAE, MSE, RMSE, max/mean/relative error, n) on labelled images."""
    from rich.progress import Progress

    from edgeba.evaluate import evaluate as run_evaluation
    from edgeba.evaluate import read_labels
    from edgeba.preprocess import TTA_VIEWS

    n = len(read_labels(labels_csv))  # fail on a bad CSV before loading the model
    predictor = _predictor(model, backend, threads, precise, images=n)
    with Progress(console=_stderr_console(), transient=True) as bar:
        task = bar.add_task("evaluating", total=n)
        def months(path, sex):
            pred = predictor.predict(path, sex)
            return pred.bone_age_months, pred.interval_months

        ev = run_evaluation(images_dir, labels_csv, months,
                            lambda _id: bar.advance(task))
    for image_id, why in ev.failures:
        typer.echo(f"edgeba: failed: {image_id}: {why}", err=True)
    if ev.metrics is None:
        _fail(f"all {n} images failed; no metrics")
    m = ev.metrics
    if as_json:
        typer.echo(_dumps(m))
    else:
        views = f", {len(TTA_VIEWS)} views averaged" if predictor.tta else ""
        typer.echo(f"model {predictor.manifest.name}, backend {predictor.backend}{views}, n = {m['n']}")
        for key, label in (("mae", "MAE"), ("mse", "MSE"), ("rmse", "RMSE"), ("max_error", "max error"), ("mean_error", "mean error")):
            typer.echo(f"  {label:<21}{m[key]:10.2f} months" + ("²" if key == "mse" else ""))
            if key == "mae":
                typer.echo(f"  {'  95 % interval':<21}{m['mae_ci95'][0]:6.2f} - {m['mae_ci95'][1]:.2f} (bootstrap over the {m['n']} images)")
        typer.echo(f"  {'mean relative error':<21}{m['mean_relative_error'] * 100:10.2f} %")
        if m["interval_coverage"] is not None:
            typer.echo(f"  {'90 % intervals':<21}{m['interval_coverage'] * 100:10.2f} % cover the label, mean width {m['interval_mean_width']:.1f} months")
        typer.echo("  MAE by true age     " + ", ".join(f"{band} {v['mae']:.2f} (n {v['n']})" for band, v in m["mae_by_age_band"].items()))
    if ev.failures:
        typer.echo(f"edgeba: {len(ev.failures)} of {n} images failed and are not in the metrics", err=True)
        raise typer.Exit(1)


@app.command()
@_guarded
def info(
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory (default: the shipped model)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Versions, installed backends and the model's manifest (files verified against their sha256)."""
    from edgeba.info import collect

    data = collect(model)
    if as_json:
        typer.echo(_dumps(data, indent=1))
        return
    typer.echo(f"edgeba {data['edgeba']} on Python {data['python']}, {data['machine']} ({data['cpus']} CPUs)")
    typer.echo("packages: " + ", ".join(f"{k} {v}" for k, v in data["packages"].items() if v))
    typer.echo(f"backends installed: {', '.join(data['backends']) or 'none'}; auto -> {data['auto_backend'] or 'none'}")
    m = data["model"]
    if "error" in m:
        typer.echo(f"model: {m['error']}")
        raise typer.Exit(1)
    typer.echo(f"model {m['name']} ({m['dir']}), created {m['created']}, sex input: {m['sex_input']}")
    typer.echo(f"  preprocess: {json.dumps(m['preprocess'])}; target: {json.dumps(m['target'])}")
    for stage, formats in m["formats"].items():
        typer.echo(f"  {stage}: " + ", ".join(f"{f} [{s}]" for f, s in formats.items()))
    if m.get("metrics"):
        typer.echo(f"  metrics: {json.dumps(m['metrics'])}")
    if not m["verified"]:
        raise typer.Exit(1)


def _import_stage(module: str, command: str, extra: str):
    """Import a lifecycle module that may be absent (optional extras, or not part of this install)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            _fail(f"`edgeba {command}` is not available in this install ({module} is missing)")
        _fail(f"`edgeba {command}` needs the {extra} extra: pip install 'edgeba[{extra.strip('[]')}]' (missing module {exc.name})")


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
@_guarded
def train(ctx: typer.Context) -> None:
    """Train a stage (needs [train]): `edgeba train regressor|crops ARGS...` (ARGS: the stage's --help)."""
    import pkgutil

    pkg = _import_stage("edgeba.training", "train", "[train]")
    # A stage is a module with a main(argv); read the sources instead of importing Keras to list them.
    stages = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                    if "\ndef main(" in Path(pkg.__path__[0], f"{m.name}.py").read_text(errors="ignore"))
    usage = f"usage: edgeba train STAGE [ARGS...], STAGE one of: {', '.join(stages)} (`edgeba train STAGE --help` for its ARGS)"
    if ctx.args[:1] in (["--help"], ["-h"]):
        typer.echo(usage)
        return
    if not ctx.args or ctx.args[0] not in stages:
        _fail(usage, 2)
    mod = _import_stage(f"edgeba.training.{ctx.args[0]}", "train", "[train]")
    if not callable(getattr(mod, "main", None)):
        _fail(f"edgeba.training.{ctx.args[0]} is a library module, not a training stage", 2)
    mod.main(ctx.args[1:])


@app.command()
@_guarded
def export(
    unet: Path = typer.Argument(..., help="Float U-Net (.keras)."),
    regressor: Path = typer.Argument(..., help="Float regressor (.keras) from a training run."),
    out: Path = typer.Argument(..., help="Model directory to write (files + manifest.json)."),
    config: Optional[Path] = typer.Option(None, "--config", help="The regressor run's config.json (default: next to the regressor)."),
    formats: Optional[list[str]] = typer.Option(None, "--format", help="Format to write (repeatable); default: all."),
    name: str = typer.Option("edgeba-default", "--name"),
    n_calib: Optional[int] = typer.Option(None, "--n-calib", min=1, help="INT8 calibration images."),
) -> None:
    """Export both float models to every format (TFLite/OpenVINO/ONNX, FP32 and INT8) with a manifest."""
    for p in (unet, regressor):
        if not p.is_file():
            _fail(f"{p}: not found")
    mod = _import_stage("edgeba.export", "export", "[train]")
    kw = {"name": name, "config": config} | ({"formats": formats} if formats else {}) | ({"n_calib": n_calib} if n_calib else {})
    try:
        manifest = mod.main(unet, regressor, out, **kw)
    except (FileNotFoundError, ValueError) as exc:  # the exporter's own checks of its inputs
        _fail(str(exc).splitlines()[0])
    typer.echo(f"wrote {out}/manifest.json ({', '.join(sorted({f for s in manifest['stages'].values() for f in s}))})")


@app.command(context_settings=_PASSTHROUGH)
@_guarded
def bench(ctx: typer.Context) -> None:
    """Benchmark every installed backend (latency, memory, size, drift): `edgeba bench [--quick] ...`."""
    mod = _import_stage("edgeba.bench", "bench", "[openvino,onnx]")
    if not callable(getattr(mod, "main", None)):
        _fail("edgeba.bench has no main(argv) entry point", 3)
    code = mod.main(ctx.args)
    raise typer.Exit(code if isinstance(code, int) else 0)


@app.command()
@_guarded
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens the page to the whole network (see README)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 = any free port (printed)."),
    backend: Backend = typer.Option(Backend.auto, "--backend", case_sensitive=False, help="Runtime; auto = fastest installed INT8 runtime here."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory with manifest.json (default: the shipped INT8 model)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all available)."),
    max_upload_mb: int = typer.Option(100, "--max-upload-mb", min=1, help="Larger uploads are refused (413)."),
) -> None:
    """The clinic web page (needs [serve]): drop radiographs in a browser, read, print or save the bone ages."""
    web = _import_stage("edgeba.serve", "serve", "[serve]")
    sock = web.bind(host, port)  # before loading the model: a busy port fails at once
    predictor = _predictor(model, backend, threads)  # loaded once; every request shares it
    shown = "<this machine's address>" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    typer.echo(f"edgeba serve: model {predictor.manifest.name}, backend {predictor.backend}; open {url} (Ctrl+C stops)")
    if not web.is_loopback(host):
        typer.echo(f"edgeba serve: warning: listening on {host}: anyone who can reach this machine can upload images "
                   "and read results (plain HTTP, no login); only on a closed clinic network", err=True)
    web.serve(sock, predictor, model, max_upload_mb * 1024 * 1024)


@app.command(context_settings=_PASSTHROUGH)
@_guarded
def stress(ctx: typer.Context) -> None:
    """Stress suite on val (rotations, framing, plates, inversion, noise...): `edgeba stress [--quick] [--model DIR] ...`."""
    from edgeba.stress import main as stress_main

    raise typer.Exit(stress_main(ctx.args))


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # python -m edgeba.cli
    sys.exit(app())
