"""tools.scaling_sweep: the power-law fit against known laws, and a 3-scale 2-series sweep of a
tiny classifier on generated class images (table, plot, sweep.json, resumable)."""
import json
import math

import numpy as np
import pytest

from tests.test_classify_training import class_records, tiny_config
from tools import scaling_fit, scaling_sweep

GRID = "data_gen/shape_classes_grid.txt"  # 9 classes: 3 colours x 3 shapes


def test_fit_recovers_a_known_exponent_and_crossing():
    n = np.array([100, 300, 1000, 3000, 10000, 30000])
    exact = scaling_fit.fit_power_law(n, 2.0 * n ** -0.35)
    assert exact["alpha"] == pytest.approx(0.35, abs=1e-9)
    assert exact["a"] == pytest.approx(2.0, rel=1e-9) and exact["r2"] == pytest.approx(1.0)
    noise = np.exp(np.random.default_rng(0).normal(0, 0.02, len(n)))
    noisy = scaling_fit.fit_power_law(n, 2.0 * n ** -0.35 * noise)
    assert noisy["alpha"] == pytest.approx(0.35, abs=0.02) and noisy["r2"] > 0.99
    # 2 N^-0.35 = 1 N^-0.2  <=>  N = 2 ** (1 / 0.15)
    other = scaling_fit.fit_power_law(n, 1.0 * n ** -0.2)
    assert scaling_fit.crossing_scale(exact, other) == pytest.approx(2 ** (1 / 0.15), rel=1e-6)
    assert scaling_fit.crossing_scale(exact, exact) is None
    assert scaling_fit.fit_power_law([10], [0.5])["alpha"] is None  # one point: no fit


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory):
    """Two series of the 9 grid classes: 'real' drawn at 32 px, 'synthetic' at 16 px (a
    blurrier domain once resized); a held-out set drawn at 32 px."""
    root = tmp_path_factory.mktemp("sweep_data")

    def records(name, per_class, seed, size):
        from data_gen import images, write
        assert images.main(["--prompts", "classnames", GRID, "--backend", "shapes",
                            "--images-per-prompt", str(per_class), "--save-size", str(size),
                            "--seed", str(seed), "--out", str(root / f"{name}_pairs")]) == 0
        assert write.main(["--pairs", str(root / f"{name}_pairs" / "*.tar"), "--out",
                           str(root / name), "--num-shards", "1", "--quiet"]) == 0
        return str(root / name / "*.tfrecord")

    real, synthetic = records("real", 8, 1, 32), records("synthetic", 8, 2, 16)
    val = records("val", 3, 9, 32)
    config = tiny_config(real, val)
    config.model.num_classes = 9
    config.batch_size, config.total_steps, config.warmup_steps = 16, 6, 1
    config.checkpoint.every_steps, config.log.every_steps = 0, 3
    path = root / "config.json"
    path.write_text(config.to_json_best_effort())
    return path, real, synthetic


@pytest.mark.slow
def test_three_scale_two_series_sweep(sweep_inputs, tmp_path, capsys):
    config, real, synthetic = sweep_inputs
    argv = ["--config", str(config), "--scales", "16,32,64", "--out", str(tmp_path),
            "--series", f"real={real}", "--series", f"synthetic={synthetic}", "--steps", "4"]
    assert scaling_sweep.main(argv) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["metric"] == "classify/val/top1" and sweep["steps_rule"] == {"steps": 4}
    for name in ("real", "synthetic"):
        points = sweep["series"][name]["points"]
        assert [p["scale"] for p in points] == [16, 32, 64]
        assert all(p["steps"] == 4 and 0 <= p["error"] <= 1 for p in points)
        assert all(p["error"] == pytest.approx(1 - p["value"]) for p in points)
        fit = sweep["series"][name]["fit"]
        # the fit is the least-squares line through these very points (log-log)
        expected = scaling_fit.fit_power_law([p["scale"] for p in points],
                                             [p["error"] for p in points])
        assert fit == expected
        config_of = json.loads((tmp_path / name / "n32" / "config.json").read_text())
        assert config_of["data"]["subset_records"] == 32 and config_of["total_steps"] == 4
    assert (tmp_path / "table.md").read_text().count("| real |") == 3
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumable: a second run trains nothing and writes the same sweep
    evals = (tmp_path / "real" / "n64" / "eval.jsonl").read_text()
    capsys.readouterr()
    assert scaling_sweep.main(argv) == 0
    assert capsys.readouterr().out.count("done before") == 6
    assert (tmp_path / "real" / "n64" / "eval.jsonl").read_text() == evals
    assert json.loads((tmp_path / "sweep.json").read_text())["series"] == sweep["series"]


def test_steps_rule_and_bad_input(sweep_inputs, tmp_path, capsys):
    config, real, _ = sweep_inputs
    args = scaling_sweep.parse_args(["--config", str(config), "--scales", "64,16", "--out",
                                     str(tmp_path), "--epochs", "2"])
    assert args.scales == [16, 64]
    c = scaling_sweep.point_config(args, real, 64, tmp_path)
    assert c.total_steps == math.ceil(2 * 64 / 16) and c.data.subset_records == 64
    # more records asked for than the series holds: one line naming the key, exit 2
    assert scaling_sweep.main(["--config", str(config), "--scales", "1000", "--out",
                               str(tmp_path), "--steps", "2"]) == 2
    assert "data.subset_records=1000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scaling_sweep.parse_args(["--config", str(config), "--scales", "a", "--out", "x"])
