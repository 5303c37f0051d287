"""The config check at the door: one test per rule, the shipped configs pass, and
`python -m synthclip_jax.main` turns a bad config into one line and status 2 before any device
work."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import demo_cpu
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_pass(path):
    # their data paths belong to the machine they run on: choices and relations only
    validate(load(path), check_paths=False)


def test_demo_config_passes_with_paths():
    validate(demo_cpu.get_config())  # renders its own data: no path to check yet


def test_old_source_name_still_passes():
    config = demo_cpu.get_config()
    config.data.source = "synthetic_shapes"  # the name of data.source='shapes' before the rename
    validate(config)


def set_key(config, key, value):
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


# (key the error must name, {key: bad value, ...})
RULES = {
    "loss_name": ("loss.name", {"loss.name": "bogus"}),
    "accum_negatives": ("train.accum_negatives", {"train.accum_negatives": "half"}),
    "task": ("train.task", {"train.task": "regress"}),
    "classify_loss": ("loss.name", {"train.task": "classify", "loss.name": "sigmoid"}),
    "classify_classes": ("model.num_classes", {"train.task": "classify",
                                                "model.num_classes": 1}),
    "classify_no_zeroshot": ("eval.zeroshot", {"train.task": "classify",
                                               "eval.zeroshot": "/tmp"}),
    "classify_eval_needs_task": ("eval.classify", {"eval.classify": "val=/tmp"}),
    "subset_negative": ("data.subset_records", {"data.subset_records": -1}),
    "templates": ("eval.templates", {"eval.templates": "bogus"}),
    "activation": ("model.activation", {"model.activation": "relu"}),
    "image_pool": ("model.image.pool_type", {"model.image.pool_type": "argmax"}),
    "text_pool": ("model.text.pool_type", {"model.text.pool_type": "tok"}),
    "dtype": ("model.dtype", {"model.dtype": "float64"}),
    "text_reduction": ("data.text_reduction", {"data.text_reduction": "shorten"}),
    "source": ("data.source", {"data.source": "webdataset"}),
    "warmup_ge_total": ("warmup_steps", {"total_steps": 60, "warmup_steps": 100}),
    "negative_steps": ("total_steps", {"total_steps": -1}),
    "accum_divides_batch": ("batch_size", {"batch_size": 64, "train.grad_accum_steps": 3}),
    "accum_positive": ("train.grad_accum_steps", {"train.grad_accum_steps": 0}),
    "mesh_zero": ("mesh.fsdp", {"mesh.fsdp": 0}),
    "mesh_two_fills": ("mesh.fsdp", {"mesh.data": -1, "mesh.fsdp": -1}),
    "mesh_rule_axis": ("mesh.rules", {"mesh.rules": (("embed", "model"),)}),
    "patch_divides_image": ("data.image_size", {"data.image_size": 30}),
    "image_heads": ("model.image.width", {"model.image.heads": 5}),
    "text_heads": ("model.text.width", {"model.text.heads": 3}),
    "context_length": ("model.text.context_length", {"model.text.context_length": 2}),
    "reduction_needs_tfrecord": ("data.text_reduction", {"data.source": "shapes",
                                                         "data.text_reduction": "block"}),
    "no_train_data": ("data.train", {"data.procedural.num_train": 0}),
    "rrc_scale": ("data.rrc_scale", {"data.rrc_scale": (0.5, 1.5)}),
    "num_workers": ("data.num_workers", {"data.num_workers": -1}),
    "corrupt_fraction": ("data.max_corrupt_fraction", {"data.max_corrupt_fraction": 2.0}),
    "eval_every": ("eval.every_steps", {"eval.every_steps": -1}),
    "checkpoint_every": ("checkpoint.every_steps", {"checkpoint.every_steps": -5}),
    "log_every": ("log.every_steps", {"log.every_steps": -1}),
    "checkpoint_keep": ("checkpoint.keep", {"checkpoint.keep": 0}),
    "decay_policy": ("optim.weight_decay_policy", {"optim.weight_decay_policy": "simclip"}),
    "negative_lr": ("lr", {"lr": -1e-3}),
    "read_mode": ("data.read_mode", {"data.read_mode": "mmap"}),
    "peak_tflops": ("log.peak_tflops", {"log.peak_tflops": -1.0}),
    "wandb_mode": ("log.wandb.mode", {"log.wandb.mode": "disabled"}),
    "read_block": ("data.read_block", {"data.read_block": 0}),
    "read_lanes": ("data.read_lanes", {"data.read_lanes": 0}),
    "read_mode_with_order": ("data.read_mode", {"data.read_mode": "streaming",
                                                "data.batch_order": "order.npy"}),
    "negative_weight_decay": ("weight_decay", {"weight_decay": -0.1}),
    "tower_activation": ("model.text.activation", {"model.text.activation": "relu"}),
    "tower_eps": ("model.image.layernorm_eps", {"model.image.layernorm_eps": 0.0}),
    "shared_eps": ("model.layernorm_eps", {"model.layernorm_eps": -1e-6}),
    "lr_schedule": ("optim.lr_schedule", {"optim.lr_schedule": "step"}),
    "tokenizer": ("model.text.tokenizer", {"model.text.tokenizer": "bert"}),
    "clips_needs_vocab": ("model.text.vocab_path", {"model.text.tokenizer": "clips_wordpiece"}),
    "clips_not_on_shapes": ("model.text.tokenizer", {"model.text.tokenizer": "clips_wordpiece",
                                                     "model.text.vocab_path": "/v/vocab.txt",
                                                     "data.source": "shapes"}),
    "logit_scale_min": ("model.logit_scale_min", {"model.logit_scale_min": 5.0}),
    "eval_unnamed_among_several": ("eval.zeroshot", {"eval.zeroshot": "a=/x,/y"}),
    "eval_name_twice": ("eval.retrieval", {"eval.retrieval": "a=/x/*.tfrecord,a=/y"}),
    "probe_needs_train_and_test": ("eval.linear_probe", {"eval.linear_probe": "p=/only"}),
    "retrieval_ks": ("eval.retrieval_ks", {"eval.retrieval_ks": (0, 5)}),
    "probe_shots": ("eval.linear_probe_shots", {"eval.linear_probe_shots": (-1,)}),
    "best_mode": ("checkpoint.best_mode", {"checkpoint.best_mode": "highest"}),
    "best_metric_without_eval": ("checkpoint.best_metric", {
        "checkpoint.best_metric": "zeroshot/x/top1", "eval.zeroshot": ""}),
    "image_tower": ("model.image.tower", {"model.image.tower": "convnext"}),
    "resnet_depth": ("model.image.resnet_depth", {"model.image.resnet_depth": 26}),
    "resnet_width": ("model.image.resnet_width", {"model.image.tower": "resnet",
                                                  "model.image.resnet_width": 0}),
    "resnet_no_captioner": ("model.captioner.enabled", {"model.image.tower": "resnet",
                                                        "model.captioner.enabled": True}),
    "resnet_no_two_captions": ("loss.two_captions", {"model.image.tower": "resnet",
                                                     "loss.two_captions": True}),
    "resnet_no_mfu": ("log.peak_tflops", {"model.image.tower": "resnet",
                                          "log.peak_tflops": 100.0}),
    "best_metric_needs_schedule": ("checkpoint.best_metric", {
        "checkpoint.best_metric": "zeroshot/top1", "eval.zeroshot": "/x", "eval.every_steps": 0}),
}


def test_resnet_tower_ignores_the_vit_keys():
    config = demo_cpu.get_config()
    config.model.image.update(tower="resnet", heads=5, patch_size=7)  # unused by a ResNet
    validate(config, check_paths=False)


def refusal(overrides: dict) -> ConfigError:
    """The error the demo config with `overrides` is refused with (one line)."""
    config = demo_cpu.get_config()
    for k, v in overrides.items():
        set_key(config, k, v)
    with pytest.raises(ConfigError) as raised:
        validate(config, check_paths=False)
    assert "\n" not in str(raised.value)
    return raised.value


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_names_the_key(rule):
    key, bad = RULES[rule]
    error = refusal(bad)
    assert error.key == key
    assert str(error).startswith(f"{key}=")


PATHS = {  # key -> a value that names nothing on disk
    "data.train": "{tmp}/none-*.tfrecord",
    "eval.retrieval": "{tmp}/none-*.tfrecord",
    "eval.zeroshot": "{tmp}/no_folder",
    "eval.linear_probe": "p={tmp}/no_folder,{tmp}/none-*.tfrecord",
    "data.batch_order": "{tmp}/order.npy",
    "init_from": "{tmp}/no_weights",
    "model.text.vocab_path": "{tmp}/vocab.txt",
}


@pytest.mark.parametrize("key", sorted(PATHS))
def test_missing_path_names_the_key(key, tmp_path):
    config = demo_cpu.get_config()
    set_key(config, key, PATHS[key].format(tmp=tmp_path))
    validate(config, check_paths=False)  # only the path check sees it
    with pytest.raises(ConfigError) as raised:
        validate(config)
    assert raised.value.key == key


def test_existing_and_remote_paths_pass(tmp_path):
    (tmp_path / "a-00000-of-00001.tfrecord").write_bytes(b"")
    (tmp_path / "zs").mkdir()
    (tmp_path / "order.npy").write_bytes(b"")
    config = demo_cpu.get_config()
    config.data.train = config.eval.retrieval = str(tmp_path / "a-*.tfrecord")
    config.eval.zeroshot = str(tmp_path / "zs")
    config.data.batch_order = str(tmp_path / "order.npy")
    validate(config)
    config.data.train = "gs://bucket/none/*.tfrecord"  # not listable offline: left to the reader
    validate(config)


def test_evaluation_needs_no_training_data(tmp_path):
    config = demo_cpu.get_config()
    config.data.train = str(tmp_path / "none-*.tfrecord")
    validate(config, training=False)


def run_main(tmp_path, *overrides):
    """Runs main with a `jax` that cannot be imported: the check must come before device work."""
    (tmp_path / "no_jax" / "jax").mkdir(parents=True)
    (tmp_path / "no_jax" / "jax" / "__init__.py").write_text(
        "raise ImportError('jax imported before the config check')\n")
    workdir = tmp_path / "workdir"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "no_jax"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "synthclip_jax.main",
                           "--config=configs/demo_cpu.py", f"--workdir={workdir}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert not workdir.exists()  # stopped before writing anything
    return proc


@pytest.mark.parametrize("override,named", [
    ("--config.total_steps=60", "warmup_steps=100"),
    ("--config.loss.name=bogus", "loss.name='bogus'"),
    ("--config.total_step=60", "--config.total_step"),  # ml_collections: no such key
])
def test_main_exits_2_with_one_line_before_jax(tmp_path, override, named):
    proc = run_main(tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("config error: ") and named in last


def test_choice_names_match_their_implementations():
    """choices.py lists the names; the jax modules map the same names onto functions."""
    from synthclip_jax.config import choices
    from synthclip_jax.models import layers, two_tower

    assert set(layers.ACTIVATIONS) == set(choices.ACTIVATIONS)
    assert set(two_tower.DTYPES) == set(choices.DTYPES)


def test_vocab_larger_than_the_embedding_table_names_the_key(tmp_path):
    config = demo_cpu.get_config()
    (tmp_path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(100)) + "\n")
    config.model.text.update(tokenizer="clips_wordpiece", vocab_path=str(tmp_path / "vocab.txt"),
                             vocab_size=64)
    with pytest.raises(ConfigError, match="has 100 tokens") as raised:
        validate(config)
    assert raised.value.key == "model.text.vocab_path"
    config.model.text.vocab_size = 100
    validate(config)
