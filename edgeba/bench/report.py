"""The result file as a Markdown report and a PNG plot (the JSON holds every number)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

def _f(v, fmt="{:.1f}", none="-") -> str:
    return none if v is None else fmt.format(v)


def markdown(r: dict) -> str:
    m, fm, d = r["machine"], r["formats"], r["derived"]
    ts = [str(t) for t in r["settings"]["threads"]]
    load = m["loadavg"]
    lines = [
        f"# edgeba bench: {r['model']['name']}{' --precise' if r['settings'].get('precise') else ''} on {m['cpu']} ({m['arch']})",
        "",
        f"{r['created']}, `{r['command']}`{' (--quick: a smoke run, not a measurement)' if r['quick'] else ''}.",
        f"Images: accuracy on {r['images']['accuracy']} {r['images']['split']} images; latency cycles over {r['images']['latency']} of them, "
        f"{r['settings']['warmup']} warm-up + {r['settings']['runs']} timed runs per format and thread count. "
        f"Load average (1 min) at start {load['start'][0]:.2f}, end {load['end'][0]:.2f}, max {load['max_1min']:.2f} on {m['cores_logical']} cores.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for k in ("cpu", "board", "arch", "cores_usable", "cpu_flags", "memory_gb", "os", "kernel", "libc", "python", "nice"):
        v = m[k]
        lines.append(f"| {k} | {', '.join(v) if isinstance(v, list) else v} |")
    lines.append(f"| packages | {', '.join(f'{p} {v}' for p, v in m['packages'].items())} |")
    head = ["format", "MB", "load ms (first)"] + [f"e2e ms {t}T (p90)" for t in ts] + [f"models ms {t}T" for t in ts]
    head += ["cold start s (first)", "peak RSS MB", "MAE (QC ok)", "mask IoU vs ref", "regress drift", "e2e drift"]
    lines += ["", f"## Summary (reference for drift: {r['reference']}; `edgeba predict` default here: {r['auto_format']})", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f, x in fm.items():
        lat, cs, acc = x["latency"], x.get("cold_start"), x.get("accuracy") or {}
        runs_as = next((v["inference_precision"] for v in lat.values() if "inference_precision" in v), None)
        name = f + (" *" if x["derived_by_bench"] else "") + (f" (runs {runs_as})" if runs_as and runs_as != "f32" else "")
        row = [name, _f(x["size_bytes"]["total"] / 1e6, "{:.2f}"),
               f"{_f(lat.get(ts[0], {}).get('load_ms'), '{:.0f}')} ({_f(lat.get(ts[0], {}).get('load_first_ms'), '{:.0f}')})"]
        row += [f"{lat[t]['total']['median']:.1f} ({lat[t]['total']['p90']:.1f})" if t in lat else "-" for t in ts]
        row += [_f(lat[t]["models"]["median"]) if t in lat else "-" for t in ts]
        row += [f"{_f(cs and cs['wall_s']['median'], '{:.2f}')} ({_f(cs and cs['first_run_s'], '{:.2f}')})",
                _f(cs and cs["peak_rss_mb"], "{:.0f}"), f"{_f(acc.get('mae'), '{:.2f}')} ({_f(acc.get('mae_qc_ok'), '{:.2f}')})"]
        for k, fmt in (("mask_iou", "{:.3f}"), ("regress_drift_months", "{:.2f}"), ("e2e_drift_months", "{:.2f}")):
            s = acc.get(k)
            row.append("ref" if acc.get("reference") else (f"{fmt.format(s['mean'])} (p95 {fmt.format(s['p95'])})" if s else "-"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "MB: both stages' files. Load: sha256 check + sessions of both stages, in a process that loaded them once "
              "before (first: that first load, which also compiles OpenVINO models into its empty cache). Cold start: a whole "
              "`edgeba predict` process, median of the measured runs (first: the unmeasured first run, empty OpenVINO cache). "
              "MAE (months): every image, forced through mask QC like --force (QC ok: only images whose mask passed QC). Drift: mean (p95) over the images; IoU: U-Net mask vs the reference's mask; "
              "regress drift: this regressor on the reference's own input (months); e2e drift: whole pipeline vs the reference (months). "
              "`*`: FP32 file exported by the bench from the model's Keras files (the shipped dir lacks it). "
              "(runs bf16): OpenVINO's CPU plugin runs an FP32 model in bfloat16 on CPUs with AMX / AVX512-BF16, as `edgeba predict` does."]
    for t in ts:
        lines += ["", f"## Stages at {t} thread(s): median ms", "",
                  "| format | decode | segment (U-Net alone x passes) | mask QC etc. | crop+enhance | regress (one regressor call alone) | total (p90) | not in a model |",
                  "|---|---|---|---|---|---|---|---|"]
        for f, x in fm.items():
            s = {k: v["median"] for k, v in x["latency"].get(t, {}).items() if isinstance(v, dict) and "median" in v}
            if s:
                passes = x["latency"][t].get("unet_passes", {}).get("median", 1)
                lines.append(f"| {f} | {s['decode']:.1f} | {s['segment']:.1f} ({s['segment_model']:.1f} x {passes:g}) | {s['qc']:.1f} | "
                             f"{s['crop_enhance']:.1f} | {s['regress']:.1f} ({s['regress_model']:.1f}) | "
                             f"{s['total']:.1f} ({x['latency'][t]['total']['p90']:.1f}) | {s['total'] - s['models']:.1f} |")
    lines += ["", "Stages as `edgeba predict` times them (Predictor.timings_ms); \"alone\": the runtime call by itself on the same "
              f"inputs, timed apart; \"not in a model\": total minus all model calls alone (the U-Net as often as each prediction ran it: as stored and upside down, more for a turned, negative or small hand; the regressor "
              f"{d['pipeline_gmac']['tta_views']} time(s)): numpy/OpenCV work that INT8 cannot speed up."]
    lines += ["", "## INT8 speed-up over FP32, same backend, same run (FP32 ms / INT8 ms)", "", "| backend | " +
              " | ".join(f"e2e {t}T | models {t}T" for t in ts) + " |", "|---|" + "---|---|" * len(ts)]
    for b, v in d["int8_speedup"].items():
        lines.append(f"| {b} | " + " | ".join(f"{v[t]['e2e']:.2f} | {v[t]['models']:.2f}" if t in v else "- | -" for t in ts) + " |")
    g = r["gmac"]
    lines += ["", "## Compute floor", "",
              "GMAC per model call: " + ", ".join(f"{k} {v['gmac']:.3f} ({v['source']})" for k, v in g.items())
              + f"; per image {_f(d['pipeline_gmac']['gmac'], '{:.3f}')} (the U-Net runs {d['pipeline_gmac'].get('unet_passes', 1):g} time(s), "
              f"the regressor {d['pipeline_gmac']['tta_views']} time(s): test-time augmentation views).",
              f"Peak: best of {r['settings']['matmul']['repeats']} float32 numpy matmuls n={r['settings']['matmul']['n']} ("
              + ", ".join(f"{t}T {p['gmac_per_s']:.1f} GMAC/s" for t, p in r["peak"].items()) + "). "
              "Floor = GMAC / peak; x floor = measured median / floor (models: all model calls of one image, alone; e2e: whole pipeline). "
              "INT8 kernels can beat a float32 floor, so it bounds FP32 paths only.", "",
              "| format | " + " | ".join(f"x floor models {t}T | x floor e2e {t}T" for t in ts) + " |", "|---|" + "---|---|" * len(ts)]
    for f in fm:
        cells = []
        for t in ts:
            x = d["floor"].get(t, {}).get("x_floor", {}).get(f)
            cells += [_f(x and x["models"]), _f(x and x["e2e"])]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Floor ms: " + ", ".join(f"{t}T {_f(v['floor_ms'], '{:.2f}')}" for t, v in d["floor"].items()) + ".")
    if r.get("throughput"):
        lines += ["", f"## Batch throughput: `edgeba predict DIR --out results.csv --workers N` ({r['auto_format']}, same run, back to back)", "",
                  "| workers | threads each | images | wall s | images/s (whole run) | images/s (steady state) |", "|---|---|---|---|---|---|"]
        for x in r["throughput"]:
            lines.append(f"| {x['workers']} | {x['threads_per_worker'] or 'all'} | {x['images']} | {x['wall_s']:.2f} | {x['images_per_s']:.2f} | "
                         f"{_f(x['steady_images_per_s'], '{:.2f}')} |")
        lines += ["", "Whole run: from the command's start (worker processes, model loads) to the last row; steady state: "
                  "from the first finished row to the last."]
    if d.get("auto_table"):
        lines += ["", "## What `--backend auto` weighs (edgeba.backends.MEASURED)", "",
                  "Per backend (its INT8 file): cold start of `edgeba predict` (s, median) and end-to-end ms per further image at 1 thread; "
                  "auto picks the smallest start + (images - 1) x per image.", "", "```",
                  "{" + ",\n ".join(f'"{b}": {{"cold_start_s": {v["cold_start_s"]}, "image_ms": {v["image_ms"]}}}' for b, v in d["auto_table"].items()) + "}",
                  "```"]
    lines += ["", "## Targets (stated for x86, 1 thread)", "", "| target | path | value | limit | pass |", "|---|---|---|---|---|"]
    for t in d["targets"]:
        ok = {True: "yes", False: "**no**", None: "not measured"}[t["pass"]]
        lines.append(f"| {t['name']} | {t['path']} | {_f(t['value'], '{:.2f}')} | {t['op']} {t['limit']} | {ok} |")
    notes = [] if r["reference"] == "keras" or r["reference"].endswith("fp32") else [
        f"no float format could run here: drift is measured against {r['reference']}, not against a float model"]
    notes += [f"{f}: {e}" for f, x in fm.items() for e in x["errors"]]
    notes += [f"{f}: {a['failed']} of {r['images']['accuracy']} images failed ({'; '.join(a['failures'])})"
              for f, x in fm.items() if (a := x.get("accuracy")) and a["failed"]]
    notes += [f"{f}: {a['qc_fail']} of {a['n']} masks failed mask QC (predicted anyway, as with --force)"
              for f, x in fm.items() if (a := x.get("accuracy")) and a["qc_fail"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    """Stacked stage medians per format, one panel per thread count; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ts = [str(t) for t in r["settings"]["threads"]]
    fm = r["formats"]
    names = list(fm)
    parts = (("decode", "decode"), ("segment (U-Net + its pre/post-processing)", "segment"), ("mask QC etc.", "qc"),
             ("crop + enhance", "crop_enhance"), ("regress", "regress"))
    fig, axes = plt.subplots(1, len(ts), figsize=(6 * len(ts), 0.45 * len(names) + 2.2), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], ts):
        left = np.zeros(len(names))
        for label, key in parts:
            v = np.array([fm[f]["latency"].get(t, {}).get(key, {}).get("median", 0.0) for f in names])
            ax.barh(names, v, left=left, label=label)
            left += v
        ax.set_title(f"{t} thread(s): median ms per image")
        ax.set_xlabel("ms")
        ax.invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(parts), fontsize=8, frameon=False)
    fig.suptitle(f"edgeba {r['model']['name']} on {r['machine']['cpu']} ({r['machine']['arch']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


