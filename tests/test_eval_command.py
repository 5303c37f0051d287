"""The linear probe against scikit-learn, the best checkpoint across a resume, and
`python -m synthclip_jax.evaluate` end to end on a tiny trained workdir."""
import json
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from synthclip_jax.evaluate import linear_probe
from synthclip_jax.evaluate.__main__ import main as evaluate_main
from synthclip_jax.train import loop
from synthclip_jax.train.best_checkpoint import BEST_DIR, BestCheckpoint
from synthclip_jax.train.checkpoint import STATE
from tests.test_evaluate import training_with_eval_config


def blobs(n, rng, means):
    labels = rng.integers(0, len(means), n)
    x = means[labels] + rng.normal(size=(n, means.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def sklearn_probe(train_x, train_y, test_x, test_y, fit_idx, val_idx, final_idx):
    """The same protocol written with scikit-learn: sweep C on the held-out part, refit."""
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weak penalties on separable subsets stop at max_iter
        scores = [LogisticRegression(C=c, max_iter=1000).fit(train_x[fit_idx], train_y[fit_idx])
                  .score(train_x[val_idx], train_y[val_idx]) for c in linear_probe.C_GRID]
        c = linear_probe.C_GRID[int(np.argmax(scores))]
        return LogisticRegression(C=c, max_iter=1000).fit(
            train_x[final_idx], train_y[final_idx]).score(test_x, test_y)


def test_linear_probe_matches_sklearn_with_the_same_search():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    means = rng.normal(size=(10, 32)) * 0.35  # overlapping classes: accuracy well below 1
    train_x, train_y = blobs(2000, rng, means)
    test_x, test_y = blobs(1000, rng, means)
    fit_idx, val_idx = linear_probe.split_validation(len(train_y), seed=0)
    ours, _ = linear_probe.probe(train_x, train_y, test_x, test_y, 10, seed=0)
    ref = sklearn_probe(train_x, train_y, test_x, test_y, fit_idx, val_idx,
                        np.arange(len(train_y)))
    assert 0.3 < ref < 0.95
    assert abs(ours - ref) <= 0.005, (ours, ref)
    # At a fixed C the two solve the same problem: the same probabilities (the search above
    # would hide a wrongly scaled penalty by picking another C).
    from sklearn.linear_model import LogisticRegression
    w, b = linear_probe.fit(train_x, train_y, np.ones(len(train_y), np.float32),
                            np.float32(1.0 / len(train_y)), 10)
    ours_p = np.asarray(jax.nn.softmax(test_x @ np.asarray(w) + np.asarray(b)))
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(train_x, train_y)
    ref_p = ref.predict_proba(test_x)
    np.testing.assert_allclose(ours_p, ref_p, atol=5e-3)
    # 10-shot: k examples per class outside the held-out part, C chosen on the held-out part.
    subset = linear_probe.k_shot(train_y, fit_idx, 10, seed=0)
    assert np.all(np.bincount(train_y[subset]) == 10) and not set(subset) & set(val_idx)
    ours, _ = linear_probe.probe(train_x, train_y, test_x, test_y, 10, seed=0, subset=subset)
    ref = sklearn_probe(train_x, train_y, test_x, test_y, subset, val_idx, subset)
    assert abs(ours - ref) <= 0.005, (ours, ref)


def test_best_checkpoint_keeps_the_best_step_across_a_resume(tmp_path):
    def params(v):
        return {"w": np.full((2, 3), v, np.float32)}

    best = BestCheckpoint(tmp_path, "zeroshot/a/top1", "max")
    for step, value in ((1, 0.2), (2, 0.5), (3, 0.4)):
        best.update(step, params(step), {"zeroshot/a/top1": value})
    assert best.best_step() == 2
    best.close()
    best = BestCheckpoint(tmp_path, "zeroshot/a/top1", "max")  # a resumed run
    best.update(4, params(4), {"zeroshot/a/top1": 0.45})
    assert best.best_step() == 2
    best.update(5, params(5), {"zeroshot/a/top1": 0.7})
    with pytest.raises(ValueError, match="not among the evaluation's metrics"):
        best.update(6, params(6), {"zeroshot/b/top1": 0.9})
    best.close()
    manager = ocp.CheckpointManager(tmp_path / BEST_DIR, item_names=(STATE,))
    assert manager.all_steps() == [5]
    restored = manager.restore(5, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore()}))
    np.testing.assert_array_equal(restored[STATE]["params"]["w"], params(5)["w"])
    manager.close()
    lowest = BestCheckpoint(tmp_path / "min", "loss", "min")
    for step, value in ((1, 3.0), (2, 1.0), (3, 2.0)):
        lowest.update(step, params(step), {"loss": value})
    assert lowest.best_step() == 2
    lowest.close()


@pytest.mark.slow
def test_evaluate_command_end_to_end(tmp_path, capsys):
    config = training_with_eval_config(tmp_path, (2, 2, 2), total_steps=2, eval_every=2)
    config.checkpoint.best_metric = "zeroshot/top1"
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    loop.train(config, workdir, devices=jax.devices())
    row = json.loads((workdir / "eval.jsonl").read_text().splitlines()[-1])

    out = tmp_path / "results.json"
    zs, rt = config.eval.zeroshot, config.eval.retrieval
    code = evaluate_main(["--workdir", str(workdir), "--best", "--zeroshot", f"shapes={zs}",
                          "--retrieval", f"rt={rt}", "--retrieval-ks", "1,5,20",
                          "--linear-probe", f"colors={zs},{zs}", "--templates", "simple",
                          "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["step"] == 2
    # The command restores the checkpoint itself: it must agree with the training-time
    # evaluation of the same step.
    assert results["zeroshot/shapes/top1"] == pytest.approx(row["zeroshot/top1"])
    assert results["zeroshot/shapes/top5"] == pytest.approx(row["zeroshot/top5"])
    for k in (1, 5):
        assert results[f"retrieval/rt/i2t_R@{k}"] == pytest.approx(row[f"retrieval/i2t_R@{k}"])
        assert results[f"retrieval/rt/t2i_R@{k}"] == pytest.approx(row[f"retrieval/t2i_R@{k}"])
    assert 0 <= results["retrieval/rt/t2i_R@20"] <= 1
    assert 0 <= results["linear_probe/colors/top1"] <= 1
    printed = capsys.readouterr().out
    assert "| zeroshot | shapes |" in printed and "| linear_probe | colors |" in printed

    # Without dataset flags: the run's own eval section, unnamed keys.
    assert evaluate_main(["--workdir", str(workdir), "--step", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["zeroshot/top1"] == pytest.approx(row["zeroshot/top1"])
    assert evaluate_main(["--workdir", str(workdir), "--zeroshot", f"x={tmp_path}/none"]) == 2
