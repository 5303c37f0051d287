"""LiT from an imported model vs the same model trained from scratch, same steps (issue 30).

  python -m tools.bench.lit_vs_scratch --out /tmp/lit --pretrained WORKDIR [--steps 150]
      [--seeds 0,1] [--num-train 2000]

1. `--pretrained`: a configs/demo_cpu.py run (e.g. tools.bench.recipes_ablation's
   baseline_seed0, trained on the shapes demo's short captions "a large red circle at the top
   left", render seed 0) is exported to OpenCLIP (`tools.convert_to_openclip`), the form in
   which a released model arrives; the fine-tunes import that directory with
   `--config.init_from` (the OpenCLIP local-dir reader, init_from.py).
2. Another dataset: the shapes demo rendered with render seed 1 and the detailed captions of
   `data.procedural.web_captions` (size, colour, count, position, background: a caption
   distribution the pretrained text tower never saw), `--num-train` pairs, with its own
   held-out retrieval pairs and zero-shot set.
3. Two runs per seed on it, same config, steps and data order:
     lit      init_from the export, train.lock_image (the image tower locked, its projection
              too: lock_image_unlocked_layers 0 keeps only the projection training)
     scratch  the same model from a random init, everything trained
   each evaluated at its last step on the new dataset's held-out pairs.
"""
import argparse
import json
import os
import subprocess
import sys

from tools.bench.jobs import run_all
from tools.bench.recipes_ablation import report


def export(pretrained, out) -> str:
    target = os.path.join(out, "imported_openclip")
    if not os.path.exists(os.path.join(target, "open_clip_config.json")):
        subprocess.run([sys.executable, "-m", "tools.convert_to_openclip",
                        f"--workdir={pretrained}", f"--out={target}"], check=True)
    return target


def command(args, name, seed, paths, imported):
    overrides = {
        "seed": seed, "total_steps": args.steps, "warmup_steps": max(1, args.steps // 15),
        "lr": args.lr, "data.train": paths["train"], "eval.retrieval": paths["retrieval"],
        "eval.zeroshot": paths["zeroshot"], "eval.every_steps": args.steps,
        "checkpoint.every_steps": 0, "log.every_steps": 25, "data.num_workers": 0}
    if name == "lit":
        overrides.update({"init_from": imported, "train.lock_image": True})
    workdir = os.path.join(args.out, f"{name}_seed{seed}")
    return workdir, [sys.executable, "-m", "synthclip_jax.main", "--config=configs/demo_cpu.py",
                     f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def held_out(workdir):
    with open(os.path.join(workdir, "eval.jsonl")) as f:
        last = json.loads(f.read().splitlines()[-1])
    return {k: v for k, v in last.items() if k != "step"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--pretrained", required=True, help="a configs/demo_cpu.py workdir")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3, help="both runs (demo_cpu's)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-retrieval", type=int, default=256)
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from configs.demo_cpu import get_config
    from synthclip_jax.data.shapes_demo import ensure_demo_data
    d = get_config().data.procedural
    paths = ensure_demo_data(os.path.join(args.out, "data"), seed=d.seed + 1,
                             image_size=d.image_size, num_train=args.num_train,
                             num_retrieval=args.num_retrieval,
                             zeroshot_per_class=d.zeroshot_per_class, web_captions=True)
    imported = export(args.pretrained, args.out)
    seeds, jobs, workdirs = [int(s) for s in args.seeds.split(",")], [], {}
    for seed in seeds:
        for name in ("lit", "scratch"):
            workdir, cmd = command(args, name, seed, paths, imported)
            workdirs[f"{name}/{seed}"] = workdir
            jobs.append((f"{name} seed {seed}", cmd, workdir + ".log"))
    run_all(jobs, args.parallel)
    report({label: held_out(w) for label, w in workdirs.items()}, ["lit", "scratch"], seeds,
           args.out)


if __name__ == "__main__":
    main()
