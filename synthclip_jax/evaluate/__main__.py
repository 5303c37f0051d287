"""Evaluate a workdir's checkpoint on a suite of datasets, as the papers report it.

  python -m synthclip_jax.evaluate --workdir RUN [--step N | --best]
      [--zeroshot NAME=SOURCE ...] [--retrieval NAME=SOURCE ...]
      [--linear-probe NAME=TRAIN_SOURCE,TEST_SOURCE ...] [--classify NAME=SOURCE ...]
      [--tfds-data-dir DIR] [--out results.json]

SOURCE: a folder of class sub-folders, a TFRecord glob, tfds:NAME[:VERSION]/SPLIT (prepared in
--tfds-data-dir; nothing is downloaded) or a prepared TFDS dataset directory + /SPLIT. Without
--zeroshot/--retrieval/--linear-probe the run's config eval section is used. Prints a markdown
table (and each dataset's time) and writes results.json: zeroshot/NAME/top1|top5|ce,
retrieval/NAME/i2t_R@K|t2i_R@K, linear_probe/NAME/top1, classify/NAME/top1|top5|ce, with
"step". --classify (a train.task=classify model, e.g. a --format timm import) uses the
Scaling-laws seed's preprocessing: Resize 256, CenterCrop 224, the model's Normalize.
Class names and templates of the standard suite come from the dataset NAME (evaluate/suite);
--templates per_dataset (the default with dataset flags) uses each dataset's own.
"""
import argparse
import json
import sys

from synthclip_jax.train.best_checkpoint import add_step_flags


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m synthclip_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
    add_step_flags(p)
    p.add_argument("--zeroshot", action="append", default=[], metavar="NAME=SOURCE")
    p.add_argument("--retrieval", action="append", default=[], metavar="NAME=SOURCE")
    p.add_argument("--linear-probe", action="append", default=[],
                   metavar="NAME=TRAIN_SOURCE,TEST_SOURCE")
    p.add_argument("--classify", action="append", default=[], metavar="NAME=SOURCE",
                   help="a classifier's top-1/top-5/cross-entropy (train.task=classify)")
    p.add_argument("--linear-probe-shots", default=None,
                   help="k-shot probes besides the full one, e.g. 1,5,10 (default: config's)")
    p.add_argument("--retrieval-ks", default=None,
                   help="Recall@K values, e.g. 1,5,10,20,50,200 (default: config's)")
    p.add_argument("--templates", default=None,
                   help="zero-shot templates: per_dataset (each dataset's suite templates, "
                        "OpenAI's 80 for other names; the default with dataset flags) or a set "
                        "of evaluate/templates.py (default without: the config's)")
    p.add_argument("--tfds-data-dir", default="", help="TFDS data_dir of tfds: sources")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's eval")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def apply_flags(config, args):
    """The run's config with the command line's datasets and choices in its eval section."""
    from synthclip_jax.config import check as config_check
    from synthclip_jax.config.error import ConfigError
    e = config.eval
    with config.unlocked():  # a run from before these keys: their defaults
        for key, default in (("linear_probe", ""), ("linear_probe_shots", ()), ("classify", ""),
                             ("retrieval_ks", (1, 5, 10)), ("tfds_data_dir", "")):
            if key not in e:
                e[key] = default
        if "task" not in config.train:
            config.train.task = "contrastive"
        if "best_mode" not in config.checkpoint:
            config.checkpoint.best_metric, config.checkpoint.best_mode = "", "max"
    if args.zeroshot or args.retrieval or args.linear_probe or args.classify:
        for spec in args.zeroshot + args.retrieval + args.linear_probe + args.classify:
            if "=" not in spec:
                raise ConfigError("flags", f"{spec!r} is not NAME=SOURCE")
        e.zeroshot, e.retrieval = ",".join(args.zeroshot), ",".join(args.retrieval)
        e.classify = ",".join(args.classify)
        e.linear_probe = ";".join(args.linear_probe)
        e.templates = "per_dataset"
    if args.templates:
        e.templates = args.templates
    if args.linear_probe_shots is not None:
        e.linear_probe_shots = ints(args.linear_probe_shots)
    if args.retrieval_ks is not None:
        e.retrieval_ks = ints(args.retrieval_ks)
    if args.tfds_data_dir:
        e.tfds_data_dir = args.tfds_data_dir
    if args.batch_size:
        e.batch_size = args.batch_size
    config_check.check_eval(config)
    config_check.check_classify(config)
    for key, source in config_check.eval_specs(config):
        config_check.check_eval_source(key, source)
    return config


def markdown_table(results: dict, timings: dict) -> str:
    """One row per dataset: its metrics as columns, then its time."""
    rows = {}
    for key, value in sorted(results.items()):
        kind, _, rest = key.partition("/")
        name, _, metric = rest.rpartition("/")
        if "chance" in metric or metric == "C":
            continue
        rows.setdefault((kind, name), {})[metric] = value
    lines = ["| task | dataset | metrics | time |", "|---|---|---|---|"]
    for (kind, name), metrics in rows.items():
        text = ", ".join(f"{m} {v:.4f}" if m == "ce" else f"{m} {100 * v:.2f}"
                         for m, v in metrics.items())
        seconds = timings.get(f"{kind}/{name}")
        lines.append(f"| {kind} | {name or '-'} | {text} | "
                     f"{'' if seconds is None else f'{seconds:.1f} s'} |")
    return "\n".join(lines)


def make_mesh(config):
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.config.error import ConfigError
    try:
        return sharding.make_mesh(config.mesh)
    except ConfigError:  # the training mesh needs other devices: evaluate data parallel
        mesh_cfg = config.mesh.copy_and_resolve_references()
        mesh_cfg.update(data=-1, fsdp=1, tensor=1)
        return sharding.make_mesh(mesh_cfg, jax.devices())


def main(argv=None) -> int:
    args = parse_args(argv)
    import ml_collections
    from etils import epath

    from synthclip_jax.config.error import ConfigError
    workdir = epath.Path(args.workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        print(f"error: {config_path} not found: is {workdir} a training workdir?",
              file=sys.stderr)
        return 2
    from synthclip_jax.run.files import DamagedFile
    from synthclip_jax.config.resume_check import read_config_json
    try:
        config = ml_collections.ConfigDict(read_config_json(workdir))
    except DamagedFile as damaged:
        print(f"error: {damaged}", file=sys.stderr)
        return 2
    try:
        config = apply_flags(config, args)
    except ConfigError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2

    from synthclip_jax.run import distributed
    distributed.maybe_initialize()
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.evaluate.evaluator import Specs, Suite
    from synthclip_jax.models.two_tower import build_model
    from synthclip_jax.train.checkpoint import load_params
    from flax import nnx

    specs = Specs.from_config(config)
    if not specs:
        print("error: nothing to evaluate: pass --zeroshot/--retrieval/--linear-probe/--classify"
              " or set the run's eval.zeroshot/eval.retrieval/eval.linear_probe/eval.classify",
              file=sys.stderr)
        return 2
    mesh = make_mesh(config)
    try:
        _, params, step = load_params(
            workdir, args.step, best=args.best,
            shardings=lambda state: sharding.param_shardings(state, mesh, config.mesh.rules))
    except (FileNotFoundError, ValueError) as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(config, 0)))
    encoder = Encoder(graphdef, mesh, config.eval.batch_size, config.mesh.rules)
    suite = Suite(config, encoder, specs, progress=True)
    print(f"evaluating step {step} of {workdir}{' (best)' if args.best else ''}", flush=True)
    from synthclip_jax.evaluate.encode import NonFiniteFeatures
    try:
        results = suite(params)
    except NonFiniteFeatures as bad:
        print(f"\nerror: step {step} of {workdir}: {bad}", file=sys.stderr)  # after the bar
        return 1
    if jax.process_index() == 0:
        print(markdown_table(results, suite.timings))
        if args.out:
            out = epath.Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"step": step, **results}, indent=1, sort_keys=True))
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
