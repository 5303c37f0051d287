"""tools/gpu/slurm_datagen.sbatch: the array it submits (dry run), the command each task runs,
and the stage it runs being the real one. (shellcheck: tests/test_launch_scripts.py.)"""
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu" / "slurm_datagen.sbatch"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def sh(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**ENV, **(env or {})}, timeout=120)


def test_dry_run_prints_the_array_job():
    proc = sh("--stage", "images", "--num-workers", 16, "--partition", "gpu", "--dry-run", "--",
              "--captions", "bal/kept*.jsonl", "--out", "/data/pairs")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[0] == "sbatch"
    assert {"--array=0-15", "--gpus-per-task=1", "--ntasks=1", "--partition=gpu",
            "--output=logs/datagen-images-%A_%a.out", "--job-name=datagen-images"} <= set(words)
    script = words.index(str(SCRIPT))  # the task's own arguments follow the script
    assert words[script + 1:] == ["--stage", "images", "--num-workers", "16", "--gpus", "1",
                                  "--python", "python3", "--", "--captions", "bal/kept*.jsonl",
                                  "--out", "/data/pairs"]
    # a re-run of the workers data_gen.status lists; write needs no GPU
    words = shlex.split(sh("--stage", "write", "--num-workers", 4, "--array", "1,3",
                           "--dry-run", "--", "--out", "o").stdout)
    assert "--array=1,3" in words and not [w for w in words if w.startswith("--gpus-per")]


def test_task_runs_its_worker(tmp_path):
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_SUBMIT_DIR": str(ROOT)}
    args = ("--stage", "images", "--num-workers", 3, "--", "--shapes", 12, "--out",
            tmp_path / "pairs", "--chunk-size", 2, "--save-size", 16)
    proc = sh(*args[:4], "--dry-run", *args[4:], env=env)
    assert shlex.split(proc.stdout) == [
        "python3", "-m", "data_gen.images", "--shapes", "12", "--out", str(tmp_path / "pairs"),
        "--chunk-size", "2", "--save-size", "16", "--worker-index", "2", "--num-workers", "3"]
    proc = sh(*args, env=env)  # the real stage: worker 2 of 3 owns chunks 2 and 5
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "pairs").glob("*.tar")) == [
        "pairs-00002.tar", "pairs-00005.tar"]


def test_bad_arguments_exit_2():
    for args, words in ((("--stage", "train", "--num-workers", 2), "--stage must be"),
                        (("--stage", "images", "--num-workers", 0), "--num-workers must be"),
                        (("--stage", "images", "--num-workers", 2, "--", "--worker-index", 1),
                         "the array sets --worker-index")):
        proc = sh(*args, "--dry-run")
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
