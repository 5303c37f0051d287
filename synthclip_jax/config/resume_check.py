"""A resume continues the run that is in the workdir, not another one.

A workdir with a checkpoint holds the run its `config.json` describes. Rerunning with a changed
model (a width: an orbax shape error naming no key; `model.activation` or `model.text.causal`:
a silent resume into a different function), optimizer or data would train something no config
describes, and `config.json`, rewritten, would no longer match the checkpoints (export reads it).
So before any device work the new config is compared with the stored one: keys in `SAFE_TO_CHANGE`
(how long, how often to log, evaluate and save, how the input is read, how the mesh is shaped:
parameters are resharded on restore) may change; any other difference refuses in one line
listing the keys old -> new, unless `resume.allow_changes` names them. When the config does
change, the old `config.json` is kept as `config.stepN.json` (N: the latest checkpoint, the last
step it trained) before the new one is written. Reads files only: no jax.
"""
import json

from absl import logging
from etils import epath

from synthclip_jax.config.base import base
from synthclip_jax.config.error import ConfigError
from synthclip_jax.run.files import read_json, replace_text

ALLOW_KEY = "resume.allow_changes"
IMPORTED = "imported.json"  # marks a workdir tools.import_weights wrote (weights only)
# Keys that change neither the function trained nor the parameter/optimizer shapes nor the data
# order. A key ending in "." covers its whole group.
SAFE_TO_CHANGE = (
    "total_steps",
    "eval.", "log.", "checkpoint.every_steps", "checkpoint.keep", "resume.",
    "data.num_workers", "data.prefetch_per_worker", "data.read_threads", "data.read_ahead",
    "data.skip_corrupt", "data.max_corrupt_fraction",  # the usual fix after a corrupt record
    "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.rules",  # restore reshards onto any layout
    "mesh.dcn_data", "mesh.dcn_fsdp",
    "model.remat", "model.remat_policy",  # memory for compute; the same function
    "model.attention_impl",  # the same function by another kernel
    "optim.max_nonfinite_in_a_row",  # when to stop, not what to compute
    "init_from",  # read only when a run starts without a checkpoint
    "data.device_prefetch", "compile_cache_dir", "profile_steps",  # speed and diagnostics
    "compile.",  # --mode=compile only
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def covered(key: str, patterns) -> bool:
    """`patterns` entries: a key, or a group ("eval", "eval.", "eval.*") covering its keys."""
    for pattern in patterns:
        group = pattern.rstrip("*").rstrip(".")
        if key == group or key.startswith(group + "."):
            return True
    return False


def allowed_patterns(config) -> list[str]:
    text = config.resume.allow_changes or ""
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    known = flatten(json.loads(config.to_json_best_effort()))
    for pattern in patterns:
        if not any(covered(key, [pattern]) for key in known):
            raise ConfigError(ALLOW_KEY, f"{ALLOW_KEY}={text!r}: {pattern!r} names no config key; "
                              "list dotted keys or groups, e.g. 'lr,warmup_steps' or 'optim'")
    return patterns


def checkpoint_steps(workdir) -> list[int]:
    """Finished orbax checkpoints (folders named by their step; temporaries have a suffix)."""
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def differences(old: dict, new: dict) -> dict:
    """{key: (old value, new value)} over both configs' keys; a missing key reads as MISSING."""
    old, new = flatten(old), flatten(new)
    return {k: (old.get(k, MISSING), new.get(k, MISSING))
            for k in sorted(old.keys() | new.keys()) if old.get(k, MISSING) != new.get(k, MISSING)}


class _Missing:
    def __repr__(self):
        return "<absent>"


MISSING = _Missing()


class ResumePlan:
    """What `check` found; `write_config` applies it once this process may write the workdir."""

    def __init__(self, workdir, config_json: str, last_step: int | None, changed: dict):
        self.workdir = epath.Path(workdir)
        self.config_json = config_json
        self.last_step = last_step
        self.changed = changed

    def write_config(self):
        """Keeps the previous config.json (as config.stepN.json) if this resume changes it, then
        writes the new one."""
        path = self.workdir / "config.json"
        if self.changed and path.exists():
            kept = self.workdir / f"config.step{self.last_step}.json"
            n = 1
            while kept.exists():  # a second changed resume from the same checkpoint
                kept, n = self.workdir / f"config.step{self.last_step}.{n}.json", n + 1
            path.rename(kept)
            logging.warning("resume changes %s; previous config kept as %s",
                            describe(self.changed), kept.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        replace_text(path, self.config_json)  # a kill mid-write leaves the old file or the new


def read_config_json(workdir, resuming: bool = False) -> dict:
    """WORKDIR/config.json as a dict; one that is not JSON (torn by a kill before writes were
    atomic, or edited) raises files.DamagedFile naming it and where a copy may be."""
    workdir = epath.Path(workdir)
    kept = sorted(workdir.glob("config.step*.json"))
    fix = (f"restore it from a copy ({kept[-1].name} beside it, or the config the run was "
           "started with" if kept else "restore it from the config the run was started with")
    fix += ("; or delete it to resume without comparing configs)" if resuming else
            "; it names the model the checkpoints hold)")
    return read_json(workdir / "config.json", fix)


def describe(changed: dict) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())


def check(config, workdir) -> ResumePlan:
    """Raises ConfigError if `workdir` holds checkpoints of a run whose config.json differs from
    `config` in keys neither safe to change nor allowed by `resume.allow_changes`."""
    config_json = config.to_json_best_effort(indent=2) + "\n"
    patterns = allowed_patterns(config)
    steps = checkpoint_steps(workdir)
    stored = epath.Path(workdir) / "config.json"
    if not steps:
        return ResumePlan(workdir, config_json, None, {})
    if (epath.Path(workdir) / IMPORTED).exists():
        raise ConfigError("init_from", (
            f"{workdir} holds weights written by tools.import_weights (no optimizer, no data "
            f"state); fine-tune from them in a new workdir: --config.init_from={workdir} "
            "--workdir=NEW"))
    if not stored.exists():
        logging.warning("%s holds checkpoints but no config.json: resuming without comparing "
                        "configs", workdir)
        return ResumePlan(workdir, config_json, steps[-1], {})
    changed = differences(read_config_json(workdir, resuming=True), json.loads(config_json))
    # A key added to the code since the run started, at its default: new keys come with the
    # default that keeps the old behaviour, so runs from before the key can resume.
    defaults = flatten(json.loads(base().to_json_best_effort()))
    refused = {k: (old, new) for k, (old, new) in changed.items()
               if not covered(k, SAFE_TO_CHANGE) and not covered(k, patterns)
               and not (old is MISSING and k in defaults and new == defaults[k])}
    if refused:
        keys = ",".join(refused)
        raise ConfigError(next(iter(refused)), (
            f"resuming {workdir} (checkpoint step {steps[-1]}) with a different run: "
            f"{describe(refused)}; these change the model, optimizer or data, so rerun with the "
            f"stored values (see {stored}), use another --workdir, or allow them with "
            f"--config.{ALLOW_KEY}='{keys}'"))
    return ResumePlan(workdir, config_json, steps[-1], changed)
