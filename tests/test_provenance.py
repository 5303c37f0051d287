"""provenance.json: written by a run, extended on resume with a warning about changed code or
libraries, and honest (None + reason) about a source that is not a git checkout."""
import json
import logging
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax
import pytest

import synthclip_jax
from synthclip_jax.run import provenance
from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]


def git_head():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def train(workdir, steps):
    config = tiny_train_config()
    config.total_steps, config.checkpoint.every_steps = steps, 0
    loop.train(config, workdir, devices=jax.devices()[:1])


def read(workdir):
    return json.loads((workdir / "provenance.json").read_text())


@pytest.mark.slow
def test_run_writes_provenance_then_resume_with_other_code_warns(tmp_path, caplog):
    train(tmp_path, steps=2)
    got = read(tmp_path)
    assert got["version"] == synthclip_jax.__version__
    assert got["libraries"] == {name: metadata.version(name) for name in provenance.LIBRARIES}
    assert set(got["libraries"]) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                     "grain", "numpy"}
    head = git_head()
    if head is None:
        assert got["git"]["revision"] is None and got["git"]["reason"]
    else:
        assert got["git"]["revision"] == head and got["git"]["source"] == "git"
        assert isinstance(got["git"]["dirty"], bool)
    assert got["devices"] == {"platform": "cpu", "kind": jax.devices()[0].device_kind,
                              "count": 1, "local_count": 1}
    assert got["process_count"] == 1
    assert got["command"] == sys.argv
    assert got["python"] == ".".join(map(str, sys.version_info[:3]))
    for key in ("platform", "hostname", "started"):
        assert got[key]
    assert got["resumed_from_step"] is None
    assert got["launches"] == [{k: v for k, v in got.items() if k != "launches"}]

    # The previous launch ran other code and another jax (as if the checkout moved on).
    got["launches"][-1]["git"]["revision"] = "0" * 40
    got["launches"][-1]["libraries"]["jax"] = "0.0.1"
    (tmp_path / "provenance.json").write_text(json.dumps(got))
    with caplog.at_level(logging.WARNING):
        train(tmp_path, steps=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warning, = [w for w in warnings if "other code or libraries" in w]
    assert f"git revision: {'0' * 40} -> {got['git']['revision']}" in warning
    assert f"jax: 0.0.1 -> {jax.__version__}" in warning
    assert "resuming at step 2" in warning

    history = read(tmp_path)
    assert history["git"]["revision"] == got["git"]["revision"]  # the first launch stays on top
    assert [x["resumed_from_step"] for x in history["launches"]] == [None, 2]


def test_unchanged_resume_does_not_warn(tmp_path, caplog):
    first = provenance.record(tmp_path, None)
    with caplog.at_level(logging.WARNING):
        second = provenance.record(tmp_path, 7)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [x["resumed_from_step"] for x in second["launches"]] == [None, 7]
    assert second["started"] == first["started"]


def test_fresh_run_starts_a_new_history(tmp_path):
    provenance.record(tmp_path, None)
    provenance.record(tmp_path, 3)
    assert len(provenance.record(tmp_path, None)["launches"]) == 1  # no checkpoint: a new run


def test_not_a_git_checkout_reports_none_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.REVISION_ENV, raising=False)
    got = provenance.source_revision(tmp_path)
    assert got["revision"] is None and got["dirty"] is None
    assert "not a git checkout" in got["reason"]
    # An archive the launcher shipped names its commit in the environment.
    monkeypatch.setenv(provenance.REVISION_ENV, "abc123")
    got = provenance.source_revision(tmp_path)
    assert (got["revision"], got["dirty"], got["reason"]) == ("abc123", False, None)


def test_git_missing_reports_none_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    got = provenance.source_revision(tmp_path)
    assert got["revision"] is None and got["reason"] == "git is not on PATH"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dirty_flag_follows_training_sources(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@t", *args], check=True, capture_output=True)

    (tmp_path / "synthclip_jax").mkdir()
    (tmp_path / "synthclip_jax" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("hi\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    assert provenance.source_revision(tmp_path)["dirty"] is False
    (tmp_path / "README.md").write_text("docs only\n")
    assert provenance.source_revision(tmp_path)["dirty"] is False
    (tmp_path / "synthclip_jax" / "a.py").write_text("x = 2\n")
    got = provenance.source_revision(tmp_path)
    assert got["dirty"] is True and got["dirty_files"] == ["synthclip_jax/a.py"]
