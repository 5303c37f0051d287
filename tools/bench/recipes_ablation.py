"""Training for less at equal compute (issue 30): the CPU demo (configs/demo_cpu.py) trained
three ways with the same model FLOPs, evaluated on held-out pairs.

  python -m tools.bench.recipes_ablation --out /tmp/recipes [--budget-steps 600]
      [--seeds 0,1] [--num-train 8000] [--parallel 2]

Variants (each's `total_steps` chosen so that its model FLOPs, model_flops.step_flops summed
over its stages, equal `--budget-steps` steps of the baseline):
  baseline       32 px, every patch, 16-token text, batch 64 (configs/demo_cpu.py)
  patch_dropout  model.image.patch_dropout 0.5 for 90% of the steps, then every patch (FLIP's
                 short unmasked end, open_clip `--force-patch-dropout 0`)
  clipa          configs/clipa_cpu.py's stages: 16 px, dropout 0.5, 8-token text, batch 128,
                 then 10% at 32 px, full text, batch 64
  clipa_long_text  the same with the whole 16-token text in both stages (the demo captions
                 name the position last: "... at the top left", which 8-token rows cut)
The data are the shapes demo's (rendered once, `data_gen`-free): the training pairs, held-out
retrieval pairs (render indices after the training ones) and the zero-shot set of colour/shape
pairs training never shows. Each run evaluates with the trainer's eval hook at its last step
(zero-shot top-1, retrieval recall@1/5, final stage's resolution). Prints, per variant and seed,
steps, examples seen, FLOPs, wall time and the held-out metrics, and their mean over seeds.
"""
import argparse
import json
import os
import sys

from etils import epath

from tools.bench.jobs import run_all

STAGES = {
    "baseline": (),
    "patch_dropout": (dict(fraction=0.9, patch_dropout=0.5), dict(fraction=0.1)),
    "clipa": None,  # configs/clipa_cpu.py's
    "clipa_long_text": None,  # the same without the short text (which cuts the position words)
}


def variant_stages(name):
    if STAGES[name] is None:
        from configs.clipa_cpu import get_config
        stages = tuple(get_config().train.stages)
        if name == "clipa_long_text":
            stages = tuple({k: v for k, v in s.items() if k != "context_length"} for s in stages)
        return stages
    return STAGES[name]


def steps_for_budget(name, budget_steps: int) -> int:
    """total_steps with the baseline's model FLOPs over `budget_steps` steps."""
    from configs.demo_cpu import get_config
    from synthclip_jax.model_flops import step_flops
    from synthclip_jax.train.stage_spec import stage_config
    base = get_config()
    stages = variant_stages(name) or (dict(fraction=1.0),)
    per_step = sum(s["fraction"] * step_flops(stage_config(base, s)) for s in stages)
    return round(budget_steps * step_flops(base) / per_step)


def run_dir(out, name, seed):
    return os.path.join(out, f"{name}_seed{seed}")


def command(args, name, seed, paths):
    steps = steps_for_budget(name, args.budget_steps)
    overrides = {
        "seed": seed, "total_steps": steps, "warmup_steps": max(1, steps // 15),
        "data.train": paths["train"], "eval.retrieval": paths["retrieval"],
        "eval.zeroshot": paths["zeroshot"], "eval.every_steps": steps,
        "checkpoint.every_steps": 0, "log.every_steps": 25, "data.num_workers": 0}
    cmd = [sys.executable, "-m", "synthclip_jax.main", "--config=configs/demo_cpu.py",
           f"--workdir={run_dir(args.out, name, seed)}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    if variant_stages(name):
        cmd.append(f"--config.train.stages={variant_stages(name)!r}")
    return cmd


def summary(workdir):
    from configs.demo_cpu import get_config
    from synthclip_jax.model_flops import step_flops
    from synthclip_jax.train.stages import plan
    config = get_config()
    saved = json.loads((epath.Path(workdir) / "config.json").read_text())
    config.total_steps = saved["total_steps"]
    config.train.stages = tuple(saved["train"]["stages"])
    stages = plan(config)
    rows = [json.loads(x) for x in (epath.Path(workdir) / "metrics.jsonl").read_text()
            .splitlines()]
    evals = [json.loads(x) for x in (epath.Path(workdir) / "eval.jsonl").read_text()
             .splitlines()]
    out = {"steps": rows[-1]["step"],
           "examples": sum((s.end - s.start) * s.config.batch_size for s in stages),
           "gflops": sum((s.end - s.start) * step_flops(s.config) for s in stages) / 1e9,
           "train_sec": sum(r["step_sec"] * (r["step"] - p["step"])
                            for p, r in zip([{"step": 0}] + rows[:-1], rows))}
    out.update({k: v for k, v in evals[-1].items() if k != "step"})
    return out


def print_table(results: dict, names: list):
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"\n{'':34s}" + "".join(f"{n:>20s}" for n in names))
    for k in keys:
        print(f"{k:34s}" + "".join(f"{results[n].get(k, float('nan')):20.4f}" for n in names))


def report(results: dict, names: list, seeds: list, out: str):
    """Adds each name's mean over the seeds to `results` ({"name/seed": metrics}), prints
    the table and writes OUT/results.json."""
    for n in names:
        runs = [results[f"{n}/{s}"] for s in seeds]
        results[f"{n}/mean"] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    print_table(results, list(results))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the data and the runs")
    p.add_argument("--budget-steps", type=int, default=600,
                   help="the baseline's steps; the others get the same model FLOPs")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--num-train", type=int, default=8000, help="training pairs rendered")
    p.add_argument("--num-retrieval", type=int, default=256, help="held-out retrieval pairs")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--only", default="baseline,patch_dropout,clipa",
                   help=f"comma-separated variants of {', '.join(STAGES)}")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from configs.demo_cpu import get_config
    from synthclip_jax.data.shapes_demo import ensure_demo_data
    d = get_config().data.procedural
    paths = ensure_demo_data(os.path.join(args.out, "data"), seed=d.seed,
                             image_size=d.image_size, num_train=args.num_train,
                             num_retrieval=args.num_retrieval,
                             zeroshot_per_class=d.zeroshot_per_class)
    names, seeds = args.only.split(","), [int(s) for s in args.seeds.split(",")]
    jobs = [(f"{n} seed {s}", command(args, n, s, paths), run_dir(args.out, n, s) + ".log")
            for s in seeds for n in names]
    run_all(jobs, args.parallel)
    results = {f"{n}/{s}": summary(run_dir(args.out, n, s)) for s in seeds for n in names}
    report(results, names, seeds, args.out)


if __name__ == "__main__":
    main()
