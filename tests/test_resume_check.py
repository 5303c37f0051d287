"""A resume refuses a config that describes another run (issue 13, class 3); no jax here."""
import json

import pytest

from synthclip_jax.config import resume_check
from synthclip_jax.config.base import base
from synthclip_jax.config.error import ConfigError


def started_run(workdir, config, steps=(5, 10)):
    """A workdir as a run leaves it: config.json and finished checkpoint folders."""
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    for step in steps:
        (workdir / "checkpoints" / str(step)).mkdir(parents=True)
    (workdir / "checkpoints" / "15.orbax-checkpoint-tmp-1").mkdir()  # unfinished: not a step
    return (workdir / "config.json").read_text()


def changed(**overrides):
    config = base()
    for key, value in overrides.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


@pytest.mark.parametrize("key,value", [("model__image__width", 512),
                                       ("model__activation", "quick_gelu"),
                                       ("model__text__causal", False),
                                       ("lr", 1e-3), ("seed", 1), ("loss__name", "sigmoid")])
def test_a_change_of_model_optimizer_or_data_refuses_naming_the_key(tmp_path, key, value):
    stored = started_run(tmp_path, base())
    with pytest.raises(ConfigError) as refused:
        resume_check.check(changed(**{key: value}), tmp_path)
    dotted = key.replace("__", ".")
    message = str(refused.value)
    assert refused.value.key == dotted
    assert dotted in message and "step 10" in message and "resume.allow_changes" in message
    assert "\n" not in message
    assert (tmp_path / "config.json").read_text() == stored  # untouched


def test_all_differing_keys_are_listed_old_to_new(tmp_path):
    started_run(tmp_path, base())
    config = changed(model__image__width=512, model__activation="quick_gelu", total_steps=5)
    with pytest.raises(ConfigError, match=r"model.activation: 'gelu' -> 'quick_gelu', "
                                          r"model.image.width: 768 -> 512;") as refused:
        resume_check.check(config, tmp_path)
    assert "total_steps" not in str(refused.value)  # safe keys are not in the refusal
    assert "allow_changes='model.activation,model.image.width'" in str(refused.value)


def test_safe_changes_resume_and_keep_the_old_config(tmp_path):
    stored = started_run(tmp_path, base())
    config = changed(total_steps=5000, log__every_steps=7, data__num_workers=0, mesh__fsdp=-1)
    config.mesh.data = 1
    plan = resume_check.check(config, tmp_path)
    assert set(plan.changed) == {"total_steps", "log.every_steps", "data.num_workers",
                                 "mesh.fsdp", "mesh.data"}
    assert (tmp_path / "config.json").read_text() == stored  # check only reads
    plan.write_config()
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 5000
    assert (tmp_path / "config.step10.json").read_text() == stored


def test_allow_changes_lets_listed_keys_and_groups_through(tmp_path):
    started_run(tmp_path, base())
    config = changed(lr=1e-3, warmup_steps=10)
    config.optim.b2 = 0.95
    config.resume.allow_changes = "lr, warmup_steps,optim"
    plan = resume_check.check(config, tmp_path)
    assert set(plan.changed) == {"lr", "warmup_steps", "optim.b2", "resume.allow_changes"}
    plan.write_config()
    plan.write_config()  # a second changed resume from the same checkpoint keeps both olds
    assert json.loads((tmp_path / "config.step10.json").read_text())["lr"] == base().lr
    assert json.loads((tmp_path / "config.step10.1.json").read_text())["lr"] == 1e-3


def test_allow_changes_does_not_cover_unlisted_keys(tmp_path):
    started_run(tmp_path, base())
    config = changed(lr=1e-3, weight_decay=0.5)
    config.resume.allow_changes = "lr"
    with pytest.raises(ConfigError, match="weight_decay: 0.2 -> 0.5") as refused:
        resume_check.check(config, tmp_path)
    assert "lr:" not in str(refused.value)


def test_allow_changes_with_a_typo_is_a_config_error(tmp_path):
    config = base()
    config.resume.allow_changes = "lr,model.imag.width"
    with pytest.raises(ConfigError, match="'model.imag.width' names no config key"):
        resume_check.check(config, tmp_path)


def test_a_fresh_or_unchanged_workdir_passes(tmp_path):
    assert resume_check.check(changed(model__image__width=512), tmp_path / "new").changed == {}
    started_run(tmp_path, base())
    plan = resume_check.check(base(), tmp_path)
    assert plan.changed == {} and plan.last_step == 10
    plan.write_config()
    assert not list(tmp_path.glob("config.step*.json"))


def test_a_key_the_stored_config_lacks_refuses_unless_at_its_default(tmp_path):
    """A key added to the code since the run started passes at its default (new keys keep the
    old behaviour by default), and refuses set to anything else."""
    started_run(tmp_path, base())
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["model"]["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    resume_check.check(base(), tmp_path)
    with pytest.raises(ConfigError, match="model.dtype: <absent> -> 'bfloat16'"):
        resume_check.check(changed(model__dtype="bfloat16"), tmp_path)


NEW_MODEL_KEYS = {  # added with the per-tower options: absent from older workdirs' config.json
    "model": ("logit_scale_min",),
    "model.image": ("layernorm_eps", "activation", "patch_bias", "final_ln_after_pool"),
    "model.text": ("layernorm_eps", "activation", "final_ln_after_pool", "tokenizer",
                   "vocab_path"),
    "optim": ("lr_schedule",),
}


def test_a_workdir_from_before_the_per_tower_keys_resumes(tmp_path):
    old = changed(model__layernorm_eps=1e-5, model__activation="quick_gelu")
    started_run(tmp_path, old)
    stored = json.loads((tmp_path / "config.json").read_text())
    for group, keys in NEW_MODEL_KEYS.items():
        node = stored
        for part in group.split("."):
            node = node[part]
        for key in keys:
            del node[key]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    # the old way of setting both towers still means what it meant
    assert resume_check.check(old, tmp_path).changed
    # one tower set differently is another model: refused, naming the per-tower key
    with pytest.raises(ConfigError, match=r"model\.text\.layernorm_eps: <absent> -> 1e-06"):
        resume_check.check(changed(model__layernorm_eps=1e-5, model__activation="quick_gelu",
                                   model__text__layernorm_eps=1e-6), tmp_path)
