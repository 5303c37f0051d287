"""Pod behaviour without a pod: 2 JAX processes on this machine (2 fake CPU devices each, so 4
global devices), joined with `jax.distributed.initialize` on localhost (gloo CPU collectives),
train on disjoint slices of every global batch and must match one process with 4 devices.

Phase 1 is preempted: process 0 alone gets a real SIGTERM while drawing the batch of step 3,
and both processes must agree on one step S >= 3 (JAX's preemption service), checkpoint it and
exit 0 (periodic checkpoints every 2); phase 2 reruns the same command on both processes, which
restore step S and finish. Process 0's metrics.jsonl must then read as one uninterrupted run,
with the losses of the single-process run.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from synthclip_jax.run import distributed
from synthclip_jax.data.source import make_train_source
from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config
from tests.xla_env import xla_flags

ROOT = Path(__file__).resolve().parents[1]
NUM_PROCESSES, LOCAL_DEVICES = 2, 2
MESH, TOTAL, STOP_AT, CKPT_EVERY = (2, 2, 1), 8, 3, 2
PHASE_TIMEOUT = 300
KEPT_JAX_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")

DRIVER = r'''
import json, os, signal, sys, time
from synthclip_jax.run import distributed
initialized = distributed.maybe_initialize()  # before anything touches a JAX backend

import jax
import numpy as np
from jax.experimental import multihost_utils
from synthclip_jax import sharding
from synthclip_jax.data import source as source_lib
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import Checkpointer
from tests.test_multihost import make_config
from tests.source_wrappers import ForwardingSource

args = json.loads(sys.argv[1])
config = make_config()
workdir = args["workdir"]


class StopAfter(ForwardingSource):
    """The data source, but process 0 sends itself SIGTERM once `n` batches are drawn (a
    preemption notice reaching one host first). Later batches take 0.5 s, as real steps do, so
    the notice reaches the other process (in the background) well before step TOTAL even on a
    loaded CI machine; tiny steps would otherwise race past it."""

    def __init__(self, inner, n):
        super().__init__(inner)
        self.n = n

    def __next__(self):
        batch = next(self.inner)
        if self.inner.next_batch == self.n and jax.process_index() == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.inner.next_batch > self.n:
            time.sleep(0.5)
        return batch


if args["stop_at"]:
    loop.make_train_source = lambda c: StopAfter(source_lib.make_train_source(c), args["stop_at"])

report = {"initialized": initialized, "process_index": jax.process_index(),
          "process_count": jax.process_count(), "local_devices": jax.local_device_count(),
          "global_devices": jax.device_count()}
mesh = sharding.make_mesh(config.mesh)
if args["dump_batch"]:  # the first global batch as every device sees it, gathered to all hosts
    batch = sharding.global_batch(next(source_lib.make_train_source(config)), mesh)
    gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                for k, v in batch.items()}
    if jax.process_index() == 0:
        np.savez(args["dump_batch"], **gathered)
checkpointer = Checkpointer(workdir + "/checkpoints", keep=config.checkpoint.keep)
report["resumed_from"] = checkpointer.latest_step()
checkpointer.close()
last = loop.train(config, workdir)
report["last_loss"] = last.get("loss")
checkpointer = Checkpointer(workdir + "/checkpoints", keep=config.checkpoint.keep)
report["last_checkpoint"] = checkpointer.latest_step()
checkpointer.close()
with open(f"{args['out']}.{jax.process_index()}.json", "w") as f:
    json.dump(report, f)
'''


def make_config():
    c = tiny_train_config("softmax", MESH)
    c.total_steps = TOTAL
    c.checkpoint.every_steps = CKPT_EVERY
    c.checkpoint.keep = TOTAL  # all of them, so the test sees which steps were saved
    c.log.every_steps = 1
    # StopAfter signals when batch STOP_AT is drawn: batches drawn ahead for the devices would
    # bring the notice steps earlier than the step it stands for.
    c.data.device_prefetch = 0
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, port: int, num_processes: int = NUM_PROCESSES,
                local_devices: int = LOCAL_DEVICES) -> dict:
    # The run's persistent compilation cache is kept (conftest): the phases and tests that
    # compile the same programs read each other's executables.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_", "TPU_")) or k in KEPT_JAX_VARIABLES}
    env.update(
        XLA_FLAGS=xla_flags(local_devices),
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def kill_group(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_processes(tmp_path, phase: str, args: dict, num_processes: int = NUM_PROCESSES,
                  local_devices: int = LOCAL_DEVICES, driver_code: str = DRIVER):
    """Runs the driver on `num_processes` processes; kills all of them on failure or timeout."""
    driver = tmp_path / "driver.py"
    driver.write_text(driver_code)
    port, procs, logs = free_port(), [], []
    try:
        for i in range(num_processes):
            log = open(tmp_path / f"{phase}.{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, str(driver), json.dumps(args)], cwd=ROOT,
                env=process_env(i, port, num_processes, local_devices), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))  # own process group: killed with its children
        deadline = time.monotonic() + PHASE_TIMEOUT
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{phase}: processes still running after {PHASE_TIMEOUT}s")
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one died: the others would only wait for it
            time.sleep(0.2)
        codes = [p.poll() for p in procs]
        if codes != [0] * num_processes:
            raise AssertionError(f"{phase}: exit codes {codes}")
    except BaseException as e:
        for p in procs:
            kill_group(p)
        for log in logs:
            log.close()
        tails = "\n".join(f"--- process {i} ---\n" + (tmp_path / f"{phase}.{i}.log")
                          .read_text()[-3000:] for i in range(len(procs)))
        raise AssertionError(f"{e}\n{tails}") from e
    for log in logs:
        log.close()
    reports = []
    for i in range(num_processes):
        reports.append(json.loads(Path(f"{args['out']}.{i}.json").read_text()))
    return reports


def read_metrics(workdir: Path):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], np.array([r["loss"] for r in rows])


def test_detect_single_process(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", distributed.FORCE)):
            monkeypatch.delenv(k)
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    assert distributed.detect() == (None, {})
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        distributed.detect()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "4")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed.detect()
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    how, kwargs = distributed.detect()
    assert how == "env" and kwargs["num_processes"] == 4 and kwargs["process_id"] == 3
    monkeypatch.setenv(distributed.FORCE, "0")
    assert distributed.detect() == (None, {})
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.delenv(distributed.FORCE)
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node[001-002]", SLURM_NTASKS="1",
                 SLURM_PROCID="0", SLURM_LOCALID="0")
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert distributed.detect() == (None, {})  # one task: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.detect() == ("slurm", {})
    # Single process, already-initialized backends: maybe_initialize must not touch them.
    for k in slurm:
        monkeypatch.delenv(k)
    assert distributed.maybe_initialize() is False


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path):
    workdir = tmp_path / "multi"
    out = str(tmp_path / "report")
    batch_file = tmp_path / "batch0.npz"

    # Phase 1: SIGTERM to process 0 at step 3; both stop after the same step S.
    reports = run_processes(tmp_path, "phase1", dict(
        workdir=str(workdir), stop_at=STOP_AT, dump_batch=str(batch_file), out=out + "1"))
    assert [r["process_index"] for r in reports] == list(range(NUM_PROCESSES))
    for r in reports:
        assert r["initialized"] and r["process_count"] == NUM_PROCESSES
        assert r["local_devices"] == LOCAL_DEVICES
        assert r["global_devices"] == NUM_PROCESSES * LOCAL_DEVICES
        assert r["resumed_from"] is None
    stopped = reports[0]["last_checkpoint"]
    assert [r["last_checkpoint"] for r in reports] == [stopped] * NUM_PROCESSES
    assert STOP_AT <= stopped < TOTAL, stopped
    steps, _ = read_metrics(workdir)
    assert steps == list(range(1, stopped + 1))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
                  ) == sorted(set(range(CKPT_EVERY, stopped + 1, CKPT_EVERY)) | {stopped})

    # The global batch the 2 processes assembled (each built only its own rows) is the
    # single-process batch, up to row order.
    config = make_config()
    ref_batch = next(make_train_source(config))  # 1 process here: all rows
    got = dict(np.load(batch_file))
    for key in ("image", "text"):
        assert got[key].shape == ref_batch[key].shape

    def rows(a):
        flat = a.reshape(len(a), -1)
        return flat[np.lexsort(flat.T[::-1])]

    for key in ("image", "text"):
        np.testing.assert_array_equal(rows(got[key]), rows(ref_batch[key]))

    # Phase 2: the same command again (a relaunch after preemption) restores step S on both.
    reports = run_processes(tmp_path, "phase2", dict(
        workdir=str(workdir), stop_at=0, dump_batch="", out=out + "2"))
    assert [r["resumed_from"] for r in reports] == [stopped] * NUM_PROCESSES
    steps, losses = read_metrics(workdir)
    assert steps == list(range(1, TOTAL + 1))  # written once per step: by process 0 only
    assert len(list((workdir / "tensorboard").iterdir())) == 2  # one event file per phase
    # provenance.json: one record per launch, by process 0 only (one writer: intact JSON).
    launches = json.loads((workdir / "provenance.json").read_text())["launches"]
    assert [x["resumed_from_step"] for x in launches] == [None, stopped]
    assert {(x["process_count"], x["devices"]["count"], x["devices"]["local_count"])
            for x in launches} == {(NUM_PROCESSES, NUM_PROCESSES * LOCAL_DEVICES, LOCAL_DEVICES)}

    # One process with the same 4 (fake) devices and the same global batch.
    ref_dir = tmp_path / "single"
    assert jax.device_count() >= 4
    loop.train(config, ref_dir, devices=jax.devices()[:4])
    ref_steps, ref_losses = read_metrics(ref_dir)
    assert ref_steps == steps
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)
    assert reports[0]["last_loss"] == pytest.approx(float(ref_losses[-1]), rel=2e-5)
    assert losses[-1] != losses[0]
