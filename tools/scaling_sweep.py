"""Dataset-scale sweeps, as the Scaling-laws study: train one config on nested subsets of each
data series, evaluate each, fit error = a * N**-alpha per series, and draw the curves.

  python -m tools.scaling_sweep --config FILE --scales N1,N2,... --out DIR
      [--series NAME=GLOB ...] [--epochs E | --steps S] [--metric KEY]

Subsets: scale N trains on the first N records of a fixed seeded order of the series' records
(`data.subset_records=N`, `data.subset_seed` of the config; data/pipeline.py), so each scale
holds every smaller one. --series NAME=GLOB (repeatable; e.g. real=..., synthetic=...,
mixed='A:0.5,B:0.5' is not allowed: subsets need one glob) sets data.train per series; without
it the config's data.train is the one series "data".

Steps rule: --epochs E: total_steps = ceil(E * N / batch_size) for scale N (the same number of
passes over every subset, as the paper's fixed-epoch training); --steps S: S steps at every
scale; neither: the config's total_steps at every scale (fixed steps). The warmup keeps its
fraction of the config's total_steps (at most total_steps - 1). Each point evaluates once, at
its last step, on the config's eval sets (eval.classify for train.task=classify, eval.zeroshot
for CLIP).

Metric: --metric KEY of eval.jsonl (default: the one classify/.../top1 key, else the one
zeroshot/.../top1). Error = 1 - value for accuracies; the value itself for a '/ce' key.

Writes DIR/SERIES/nN/ (the run's workdir, with result.json once finished), DIR/sweep.json
(every point, each series' fit {a, alpha, r2}, the scales where two series' fits cross),
DIR/table.md (also printed) and DIR/scaling.png (error against N on log-log axes, one line per
series with its fit). Resumable: a point with result.json is not retrained, a point with a
checkpoint resumes from it; all points share DIR/compile_cache (XLA's persistent cache).
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

from tools.scaling_fit import crossing_scale, fit_power_law, predict

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.scaling_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config .py (get_config()) or config.json")
    p.add_argument("--scales", required=True, help="dataset sizes N1,N2,... (records)")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--series", action="append", default=[], metavar="NAME=GLOB")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--epochs", type=float, default=None,
                      help="steps = ceil(E * N / batch_size) at scale N")
    rule.add_argument("--steps", type=int, default=None, help="S steps at every scale")
    p.add_argument("--metric", default=None, help="eval.jsonl key to fit (default: top-1)")
    args = p.parse_args(argv)
    try:
        args.scales = sorted({int(x) for x in args.scales.split(",") if x.strip()})
    except ValueError:
        p.error(f"--scales {args.scales!r}: expected integers N1,N2,...")
    if not args.scales or min(args.scales) < 1:
        p.error("--scales: at least one scale, each >= 1")
    series = []
    for spec in args.series:
        name, sep, glob = spec.partition("=")
        if not sep or not NAME.match(name) or not glob:
            p.error(f"--series {spec!r}: expected NAME=GLOB, NAME of letters, digits, _.-")
        series.append((name, glob))
    if len({n for n, _ in series}) != len(series):
        p.error("--series: a NAME appears twice")
    args.series = series
    if (args.epochs is not None and args.epochs <= 0) or (args.steps is not None
                                                          and args.steps < 1):
        p.error("--epochs must be > 0 and --steps >= 1")
    return args


def steps_for(config, scale, args) -> int:
    if args.epochs is not None:
        return max(1, math.ceil(args.epochs * scale / config.batch_size))
    return args.steps if args.steps is not None else int(config.total_steps)


def point_config(args, glob, scale, out):
    from synthclip_jax.export.import_weights import read_config
    config = read_config(args.config)
    total, warmup = int(config.total_steps), int(config.warmup_steps)
    if glob is not None:
        config.data.train = glob
    config.data.subset_records = scale
    steps = steps_for(config, scale, args)
    config.total_steps = steps
    config.warmup_steps = min(int(warmup * steps / max(total, 1)), steps - 1)
    config.eval.every_steps = steps  # one evaluation, at the end
    config.checkpoint.best_metric = ""
    config.compile_cache_dir = str((out / "compile_cache").resolve())
    return config


def pick_metric(row: dict, wanted) -> str:
    if wanted:
        if wanted not in row:
            raise KeyError(f"--metric {wanted!r} is not in eval.jsonl (keys: {sorted(row)})")
        return wanted
    for kind in ("classify/", "zeroshot/"):
        keys = [k for k in row if k.startswith(kind) and k.endswith("/top1")]
        if len(keys) == 1:
            return keys[0]
    raise KeyError(f"no single classify/.../top1 or zeroshot/.../top1 in eval.jsonl (keys: "
                   f"{sorted(row)}); pass --metric KEY")


def error_of(metric: str, value: float) -> float:
    return value if metric.endswith("/ce") else 1.0 - value


def run_point(args, name, glob, scale, out) -> dict:
    """Trains and evaluates one (series, scale) unless its result.json exists."""
    workdir = out / name / f"n{scale}"
    done = workdir / "result.json"
    if done.exists():
        print(f"[{name} N={scale}] done before: {done}", flush=True)
        return json.loads(done.read_text())
    from synthclip_jax.config import check as config_check
    from synthclip_jax.train import loop
    config = point_config(args, glob, scale, out)
    config_check.validate(config)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    print(f"[{name} N={scale}] training {config.total_steps} steps on {config.data.train}",
          flush=True)
    loop.train(config, workdir)
    rows = [json.loads(x) for x in (workdir / "eval.jsonl").read_text().splitlines() if x]
    last = rows[-1]
    metric = pick_metric(last, args.metric)
    result = {"series": name, "scale": scale, "steps": config.total_steps,
              "train": config.data.train, "metric": metric, "value": last[metric],
              "error": error_of(metric, last[metric]),
              "eval": {k: v for k, v in last.items() if k != "step"}}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.rename(done)  # atomic: a killed run leaves no half result
    return result


def summarize(points: dict) -> dict:
    """{'series': {name: {'points', 'fit'}}, 'crossings': [...]}"""
    series = {}
    for name, results in points.items():
        fit = fit_power_law([r["scale"] for r in results], [r["error"] for r in results])
        series[name] = {"points": results, "fit": fit}
    names, crossings = list(series), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            crossings.append({"series": [a, b], "scale": crossing_scale(series[a]["fit"],
                                                                        series[b]["fit"])})
    return {"series": series, "crossings": crossings}


def table(summary: dict) -> str:
    lines = ["| series | N | steps | metric | error | fit a | fit alpha | fit R^2 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["series"].items():
        f = s["fit"]
        fit_text = (f"{f['a']:.4g} | {f['alpha']:.4f} | {f['r2']:.3f}" if f["alpha"] is not None
                    else "- | - | -")
        for r in s["points"]:
            lines.append(f"| {name} | {r['scale']} | {r['steps']} | {r['value']:.4f} | "
                         f"{r['error']:.4f} | {fit_text} |")
    for c in summary["crossings"]:
        where = "no crossing" if c["scale"] is None else f"fits cross at N = {c['scale']:.4g}"
        lines.append(f"\n{c['series'][0]} vs {c['series'][1]}: {where}")
    return "\n".join(lines)


def plot(summary: dict, metric: str, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, s in summary["series"].items():
        n = [r["scale"] for r in s["points"]]
        e = [r["error"] for r in s["points"]]
        (line,) = ax.plot(n, e, "o", label=name)
        f = s["fit"]
        if f["alpha"] is not None:
            grid = np.geomspace(min(n), max(n), 50)
            ax.plot(grid, predict(f, grid), "-", color=line.get_color(),
                    label=f"{name} fit: {f['a']:.3g} N^-{f['alpha']:.3f}")
    scales = [r["scale"] for s in summary["series"].values() for r in s["points"]]
    notes = []
    for c in summary["crossings"]:
        if c["scale"] is None:
            continue
        if min(scales) <= c["scale"] <= max(scales):  # drawn only inside the swept range
            ax.axvline(c["scale"], color="grey", ls=":", lw=1)
        notes.append(f"{' / '.join(c['series'])} fits cross at N = {c['scale']:.3g}")
    if notes:
        ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    what = "1 - " + metric if not metric.endswith("/ce") else metric
    ax.set(xlabel="dataset size N (records)", ylabel=f"error ({what})",
           title="error against dataset scale")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quiet_orbax():
    """Orbax logs every file it writes at INFO (main.py filters it the same way)."""
    import logging as pylogging

    class Quiet(pylogging.Filter):
        def filter(self, record):
            return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname

    for handler in pylogging.getLogger().handlers:
        handler.addFilter(Quiet())
    from absl import logging
    logging.get_absl_handler().addFilter(Quiet())


def main(argv=None) -> int:
    args = parse_args(argv)
    from absl import logging
    from synthclip_jax.config.error import ConfigError
    logging.set_verbosity(logging.INFO)  # the trainer's progress lines
    quiet_orbax()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    series = args.series or [("data", None)]
    points = {}
    try:
        for name, glob in series:
            points[name] = [run_point(args, name, glob, n, out) for n in args.scales]
    except (ConfigError, KeyError, ValueError) as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    summary = summarize(points)
    metric = next(iter(points.values()))[0]["metric"]
    record = {"config": args.config, "scales": args.scales, "metric": metric,
              "steps_rule": ({"epochs": args.epochs} if args.epochs is not None else
                             {"steps": args.steps} if args.steps is not None else
                             {"steps": "config total_steps"}),
              **summary}
    (out / "sweep.json").write_text(json.dumps(record, indent=1) + "\n")
    text = table(summary)
    (out / "table.md").write_text(text + "\n")
    plot(summary, metric, out / "scaling.png")
    print(text)
    print(f"wrote {out / 'sweep.json'}, {out / 'table.md'}, {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
