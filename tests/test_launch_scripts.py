"""tools/tpu and tools/gpu launch scripts: --help, --dry-run command lines, shellcheck."""
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tools" / "tpu"
SCRIPTS = sorted([*TPU.glob("*.sh"), *(ROOT / "tools" / "gpu").glob("*.sbatch"),
                  *(ROOT / "tools" / "gpu").glob("*.sh"), *(ROOT / "tools" / "bench").glob("*.sh")])



@pytest.fixture(autouse=True)
def fake_cloud_tools(tmp_path_factory):
    """A `gcloud` (and `srun`) first on PATH that fails loudly: a dry run must not call them."""
    bin_dir = tmp_path_factory.mktemp("bin")
    calls = bin_dir / "calls"
    for tool in ("gcloud", "srun", "sbatch"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 99\n')
        (bin_dir / tool).chmod(0o755)
    ENV["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    # launch.sh keeps each workdir's pins there: none from the user's own launches.
    ENV["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    assert not calls.exists(), "dry run called: " + calls.read_text()


ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def sh(*args, env=None, check=True):
    # Its own process group, killed whole on a timeout: the scripts start compiles (the
    # pre-flight) that would otherwise outlive bash and burn the CPU for minutes.
    with subprocess.Popen(["bash", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env or ENV, cwd=ROOT,
                          start_new_session=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            raise
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def gcloud_lines(output: str):
    return [shlex.split(line) for line in output.splitlines() if line.startswith("gcloud ")]


def find(lines, *words):
    hits = [w for w in lines if w[:len(words)] == list(words)]
    assert hits, f"no `{' '.join(words)}` among:\n" + "\n".join(map(shlex.join, lines))
    return hits


def test_scripts_are_shellcheck_clean():
    assert shutil.which("shellcheck"), "install shellcheck (apt-get install -y shellcheck)"
    proc = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", ["launch.sh", "teardown.sh"])
def test_help(script):
    for flag in ("--help", "-h"):
        out = sh(TPU / script, flag).stdout
        assert out.startswith("Usage: tools/tpu/" + script)
        assert "--dry-run" in out
    assert "gcloud" not in sh(TPU / script, "--help").stderr


def test_launch_dry_run_tpu_vm_spot():
    proc = sh(TPU / "launch.sh", "--name", "clip-1", "--zone", "us-central2-b",
              "--accelerator-type", "v4-32", "--spot", "--workdir", "gs://my-bucket/runs/r1",
              "--project", "proj", "--dry-run", "--", "--config.batch_size=64",
              "--config.lr=1e-3")
    lines = gcloud_lines(proc.stdout)
    create, = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "create", "clip-1")
    assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--spot",
            "--version=tpu-ubuntu2204-base", "--project=proj"} <= set(create)
    assert "--preemptible" not in create
    # The project is copied to all workers and installed on all of them.
    scp, = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "scp")
    assert "--worker=all" in scp and "clip-1:synthclip_jax.tar.gz" in scp
    install, train = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "clip-1")
    for ssh in (install, train):
        assert {"--worker=all", "--zone=us-central2-b", "--project=proj"} <= set(ssh)
    remote = lambda words: next(w for w in words if w.startswith("--command="))[10:]
    assert "pip install" in remote(install) and "requirements.txt" in remote(install)
    assert "jax[tpu]" in remote(install)
    cmd = shlex.split(remote(train))
    assert cmd[cmd.index("python3"):cmd.index("python3") + 3] == [
        "python3", "-m", "synthclip_jax.main"]
    assert "--workdir=gs://my-bucket/runs/r1" in cmd
    assert "--config.batch_size=64" in cmd and "--config.lr=1e-3" in cmd
    assert "--config=configs/vitb16_synthci30m.py" in cmd
    # Polling the state (for the relaunch on preemption) uses describe.
    assert any("describe" in w and "--format=value(state)" in w
               for w in gcloud_lines(proc.stderr))
    assert not find_any(lines, "delete")  # kept unless --delete-when-done


def find_any(lines, word):
    return [w for w in lines if word in w]


def test_launch_dry_run_preemptible_and_delete_when_done():
    out = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w",
             "--preemptible", "--delete-when-done", "--config", "configs/demo_cpu.py",
             "--dry-run").stdout
    lines = gcloud_lines(out)
    create, = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "create", "n")
    assert "--preemptible" in create and "--spot" not in create
    delete, = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "delete", "n")
    assert {"--zone=z", "--quiet"} <= set(delete)
    assert lines[-1] == delete


def test_launch_dry_run_queued_resource_with_git():
    proc = sh(TPU / "launch.sh", "--name", "qr1", "--zone", "europe-west4-a", "--queued",
              "--spot", "--accelerator-type", "v5litepod-16", "--version", "v2-alpha-tpuv5-lite",
              "--workdir", "gs://b/run", "--repo", "https://example.com/synthclip.git",
              "--ref", "v1.0", "--delete-when-done", "--dry-run")
    lines = gcloud_lines(proc.stdout)
    create, = find(lines, "gcloud", "compute", "tpus", "queued-resources", "create", "qr1")
    assert {"--node-id=qr1", "--zone=europe-west4-a", "--accelerator-type=v5litepod-16",
            "--runtime-version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)
    install, train = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "qr1")
    assert "git clone --quiet https://example.com/synthclip.git" in " ".join(install)
    assert "checkout --quiet v1.0" in " ".join(install)
    assert not find_any(lines, "scp")
    assert "--worker=all" in train and "--workdir=gs://b/run" in " ".join(train)
    delete, = find(lines, "gcloud", "compute", "tpus", "queued-resources", "delete", "qr1")
    assert {"--force", "--quiet", "--zone=europe-west4-a"} <= set(delete)
    assert any("value(state.state)" in " ".join(w) for w in gcloud_lines(proc.stderr))


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--workdir", "gs://b/w"], "--name is required"),
    (["--name", "n", "--zone", "z", "--workdir", "/local/dir"], "must be a gs:// path"),
    (["--name", "n", "--zone", "z", "--workdir", "gs://b/w", "--spot", "--preemptible"],
     "one of --spot and --preemptible"),
    (["--name", "n", "--zone", "z", "--workdir", "gs://b/w", "--queued", "--preemptible"],
     "queued resources take --spot"),
    (["--name", "n", "--zone", "z", "--workdir", "gs://b/w", "--bogus"], "unknown option"),
])
def test_launch_rejects_bad_arguments(args, message):
    proc = sh(TPU / "launch.sh", *args, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "gcloud" not in proc.stdout


def test_teardown_dry_run():
    lines = gcloud_lines(sh(TPU / "teardown.sh", "--name", "n", "--zone", "z",
                            "--dry-run").stdout)
    assert lines == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone=z",
                      "--quiet"]]
    lines = gcloud_lines(sh(TPU / "teardown.sh", "--name", "n", "--zone", "z", "--queued",
                            "--project", "p", "--dry-run").stdout)
    assert lines == [["gcloud", "compute", "tpus", "queued-resources", "delete", "n",
                      "--zone=z", "--force", "--quiet", "--project=p"]]


@pytest.mark.parametrize("tasks_per_node, local_ids", [("1", "0,1,2,3"), ("4", None)])
def test_slurm_script_dry_run(tasks_per_node, local_ids, tmp_path):
    env = {**ENV, "DRY_RUN": "1", "WORKDIR": "/shared/run", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_NTASKS_PER_NODE": tasks_per_node, "SLURM_GPUS_ON_NODE": "4"}
    proc = sh(ROOT / "tools" / "gpu" / "slurm_train.sbatch", "--config.batch_size=32", env=env)
    cmd = shlex.split(proc.stdout)
    assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert cmd[cmd.index("-m") + 1] == "synthclip_jax.main"
    assert "--workdir=/shared/run" in cmd and "--config.batch_size=32" in cmd
    assert f"JAX_LOCAL_DEVICE_IDS={local_ids or '<SLURM_LOCALID>'}" in proc.stderr
    # the pre-flight compile for the job's nodes x GPUs comes first (shown on stderr)
    check, = [shlex.split(x.removeprefix("pre-flight: ")) for x in proc.stderr.splitlines()
              if x.startswith("pre-flight: ")]
    assert "--mode=compile" in check and "--config.compile.target=h100:1x4" in check
    assert "--config.batch_size=32" in check
    skipped = sh(ROOT / "tools" / "gpu" / "slurm_train.sbatch", "--no-preflight", env=env)
    assert "pre-flight" not in skipped.stderr and shlex.split(skipped.stdout)[0] == "srun"
    assert "--no-preflight" not in skipped.stdout
    # Without a workdir it refuses to start.
    env.pop("WORKDIR")
    proc = sh(ROOT / "tools" / "gpu" / "slurm_train.sbatch", env=env, check=False)
    assert proc.returncode != 0 and "WORKDIR" in proc.stderr


FAKE_GCLOUD = r"""#!PYTHON
# A TPU that is READY, gets preempted during the first training run, and is created anew.
import json, pathlib, sys
here = pathlib.Path(__file__).parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
state = here / "state"
command = next((a[len("--command="):] for a in args if a.startswith("--command=")), "")
if "describe" in args:
    print(state.read_text() if state.exists() else "READY")
elif "delete" in args:
    state.write_text("NOT_FOUND")
elif "create" in args:
    state.write_text("READY")
elif "pip freeze" in command:
    print("Using ssh batch size of 1.")  # gcloud chatter
    if "rev-parse" in command:
        print("c0ffee" + "0" * 34)
    print("flax==0.12.8\njax==0.10.2\nlibtpu==0.0.30\nsomething @ file:///tmp/x.whl")
elif "synthclip_jax.main" in command:
    runs = here / "train_runs"
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n == 1:  # preempted mid-run
        state.write_text("PREEMPTED")
        sys.exit(255)
"""


def fake_tpu(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("PYTHON", sys.executable))
    gcloud.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "TMPDIR": str(tmp_path)}
    calls = lambda: [json.loads(x) for x in (bin_dir / "calls.jsonl").read_text().splitlines()]
    return env, calls


def remote_command(words):
    return next(w for w in words if w.startswith("--command="))[len("--command="):]


def test_relaunch_after_preemption_installs_the_first_launch_pins(tmp_path):
    env, calls = fake_tpu(tmp_path)
    state = tmp_path / "pins"
    proc = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/r",
              "--repo", "https://example.com/s.git", "--ref", "main", "--skip-create",
              "--poll-seconds", "0", "--state-dir", state, "--no-preflight", env=env)
    assert "relaunch 1 of at most" in proc.stderr
    # The first launch recorded the commit it installed and worker 0's versions (links left
    # out: pip takes no links as constraints).
    assert (state / "revision").read_text() == "c0ffee" + "0" * 34 + "\n"
    assert (state / "constraints.txt").read_text() == (
        "flax==0.12.8\njax==0.10.2\nlibtpu==0.0.30\n")
    installs = [c for c in calls() if "ssh" in c and "git clone" in remote_command(c)]
    assert len(installs) == 2
    first, relaunch = map(remote_command, installs)
    assert "checkout --quiet main" in first and " -c " not in first
    # The relaunch: the recorded commit, not the branch tip; the recorded versions.
    assert "checkout --quiet c0ffee" in relaunch and "checkout --quiet main" not in relaunch
    assert "pip install --quiet -c ../synthclip_jax-constraints.txt -r requirements.txt" in relaunch
    scp, = [c for c in calls() if "scp" in c]
    assert scp[scp.index("scp") + 1] == str(state / "constraints.txt")
    assert scp[scp.index("scp") + 2] == "n:synthclip_jax-constraints.txt" and "--worker=all" in scp
    assert sum("synthclip_jax.main" in remote_command(c) for c in calls() if "ssh" in c) == 2

    # A later run of the script for the same workdir is pinned too, unless --repin.
    out = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/r",
             "--repo", "https://example.com/s.git", "--skip-create", "--state-dir", state,
             "--dry-run", env=env).stdout
    install = remote_command(find(gcloud_lines(out), "gcloud", "compute", "tpus", "tpu-vm",
                                  "ssh", "n")[0])
    assert "checkout --quiet c0ffee" in install and "-c ../synthclip_jax-constraints.txt" in install
    out = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/r",
             "--repo", "https://example.com/s.git", "--skip-create", "--state-dir", state,
             "--repin", "--dry-run", env=env).stdout
    install = remote_command(find(gcloud_lines(out), "gcloud", "compute", "tpus", "tpu-vm",
                                  "ssh", "n")[0])
    assert "checkout" not in install and " -c " not in install


def test_pinned_archive_ships_the_recorded_commit(tmp_path):
    state = tmp_path / "b_runs_r1"  # the default: one directory per workdir
    state.mkdir()
    (state / "revision").write_text("abc123\n")
    (state / "constraints.txt").write_text("jax==0.10.2\n")
    env = {**ENV, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    (tmp_path / "xdg" / "synthclip_jax").mkdir(parents=True)
    (tmp_path / "xdg" / "synthclip_jax" / "tpu").symlink_to(tmp_path)
    out = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/runs/r1",
             "--skip-create", "--dry-run", env=env).stdout
    archive, = [shlex.split(x) for x in out.splitlines() if x.startswith("git ")]
    assert archive[-1] == "abc123"
    lines = gcloud_lines(out)
    install, train = find(lines, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "n")
    assert "-c ../synthclip_jax-constraints.txt" in remote_command(install)
    # The workers get an archive without .git: provenance.json learns the commit from the env.
    assert "SYNTHCLIP_SOURCE_REVISION=abc123" in shlex.split(remote_command(train))


def test_launch_preflight_compiles_first_and_can_be_skipped():
    args = ("--name", "n", "--zone", "z", "--workdir", "gs://b/r", "--accelerator-type",
            "v5litepod-16", "--dry-run", "--", "--config.batch_size=64")
    lines = sh(TPU / "launch.sh", *args).stdout.splitlines()
    check = shlex.split(lines[0])  # before any gcloud command
    assert check[1:4] == ["-m", "synthclip_jax.main", "--mode=compile"]
    assert "--config.compile.target=v5litepod-16" in check and "--config.batch_size=64" in check
    skipped = sh(TPU / "launch.sh", *args[:-3], "--no-preflight", "--dry-run").stdout
    assert "--mode=compile" not in skipped


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs the aot extra")
def test_launch_preflight_refuses_a_step_that_does_not_fit(tmp_path):
    """The real compile (demo model, an impossible batch for v5e-4): nothing is created. (The
    batch is far out of reach so that the compiler refuses at once: near the limit, libtpu
    spends minutes rematerialising to make it fit.)"""
    proc = sh(TPU / "launch.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/r",
              "--accelerator-type", "v5litepod-4", "--config", "configs/demo_cpu.py", "--",
              "--config.batch_size=262144", env={**ENV, "TMPDIR": str(tmp_path)}, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # the compile exited 1 with one line: the per-device batch and what would help
    line, = [x for x in proc.stderr.splitlines() if x.startswith("compile: ")]
    assert "does not fit on v5litepod-4" in line and "65536 examples per device" in line
    assert "--config.model.remat=True" in line and "--config.train.grad_accum_steps=" in line
    assert "error: pre-flight: the train step does not fit" in proc.stderr
    assert not json.loads((tmp_path / "n-compile_report.json").read_text())["fits"]
