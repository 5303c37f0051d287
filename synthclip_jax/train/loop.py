"""The training loop: resume, step, log, checkpoint, stop cleanly on SIGTERM.

Metrics of step t are fetched to the host after step t+1 has been dispatched, so the device
never waits for the host; the one-step lag also bounds how late the non-finite guard reacts.
Each logged row also says where the time went, averaged over the steps since the previous row:
`step_sec` (wall time per step) and `data_wait_sec` (of which the loop sat waiting for the next
host batch; close to `step_sec` means input-bound), the device memory where the backend
reports it, and `mfu` (model FLOPs per second over `log.peak_tflops` x devices) when set.
"""
import os
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
from absl import logging
from etils import epath

from synthclip_jax import sharding
from synthclip_jax.run import provenance, wandb_log
from synthclip_jax.data.device_prefetch import DevicePrefetch
from synthclip_jax.data.source import make_train_source
from synthclip_jax.run.device_memory import describe, device_memory
from synthclip_jax.evaluate.evaluator import Evaluator
from synthclip_jax.run.metrics import MetricWriter
from synthclip_jax.model_flops import step_flops
from synthclip_jax.run.plots import plot_curves
from synthclip_jax.train import init_from, stages
from synthclip_jax.train.checkpoint import Checkpointer
from synthclip_jax.train.profiling import StepProfiler, enable_compile_cache
from synthclip_jax.train.state import count_params, make_train_setup
from synthclip_jax.train.step import make_train_step


class StopRequest:
    """SIGTERM (TPU/spot preemption, SLURM, `kill`): checkpoint, then exit 0. The first Ctrl-C
    (SIGINT) does the same (main.py then exits 130, as an interrupted command does); a second
    one, for a user who will not wait for the save, ends the process at once.

    One process: our handler sets `event`, and the loop stops after the current step. Several
    processes: the signal reaches them at different steps, and a process that saved and left
    alone would leave the others blocked in the next step's collectives. There JAX's preemption
    service (started by `jax.distributed.initialize`, with its own SIGTERM handler, which ours
    must not replace) tells every process the same step to stop at. `event` may also be set by
    code that stops all processes at the same step itself.
    """

    def __init__(self):
        self.event = threading.Event()
        self.signal = None  # the signal that asked to stop
        self.multiprocess = jax.process_count() > 1
        self.previous = {}
        if not self.multiprocess and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._received)

    def _received(self, signum, frame):
        del frame
        if signum == signal.SIGINT:  # the next Ctrl-C: the default action, death by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # os.write: logging takes locks the interrupted code may hold.
            os.write(2, b"Ctrl-C: saving a checkpoint after this step; Ctrl-C again to quit "
                        b"without it\n")
        self.signal = self.signal or signum
        self.event.set()

    def close(self):
        """Puts back the handlers found (a caller that trains twice in one process)."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def reached(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`; call once after every step."""
        if self.multiprocess and multihost_utils.reached_preemption_sync_point(step):
            return True
        return self.event.is_set()


class NonFiniteError(RuntimeError):
    pass


def warn_on_idle_eval_config(config):
    sets = bool(config.eval.zeroshot or config.eval.retrieval or config.eval.linear_probe
                or config.eval.get("classify"))
    if config.eval.every_steps and not sets:
        logging.warning("eval.every_steps=%d but neither eval.zeroshot nor eval.retrieval is "
                        "set: no evaluation", config.eval.every_steps)
    if sets and not config.eval.every_steps:
        logging.warning("eval sets are configured but eval.every_steps=0: no evaluation during "
                        "training (use --mode=eval afterwards)")


def restore_or_init(config, mesh, setup, checkpointer, data, previous=None):
    """`previous`: the stage before this one (train/stages.py); its last checkpoint is
    restored with its shapes and carried over to this stage's."""
    latest = checkpointer.latest_step()
    if latest is None:
        # init_from: given weights (fine-tuning), fresh optimizer; ignored once a run resumes.
        state = init_from.initial_state(config, setup) if config.init_from else setup.init()
        logging.info("initialised %s parameters on mesh %s%s",
                     f"{count_params(state['params']):,}", dict(mesh.shape),
                     f" from {config.init_from}" if config.init_from else "")
    elif previous is not None and latest <= previous.end:
        old = make_train_setup(previous.config, mesh).abstract_state
        state, data_state = checkpointer.restore(latest, old)
        state = stages.carry_over(state, old, setup.abstract_state)
        data.set_state(data_state)
        logging.info("stage %d from step %d: carried over from stage %d", previous.index + 1,
                     latest, previous.index)
    else:
        latest, state, data_state = checkpointer.restore_newest(setup.abstract_state)
        data.set_state(data_state)
        logging.info("resumed from step %d", latest)
    return state


def train(config, workdir, stop: StopRequest | None = None, devices=None,
          started=None) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns last metrics.
    With `train.stages`, one stage after another (train/stages.py). `started()` is called once
    the state is restored or initialised, before the first step: main.py writes config.json
    there, so a run refused before (mesh, batch, data, restore) leaves the workdir's files as
    they were."""
    stop = StopRequest() if stop is None else stop
    plan = stages.plan(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    for stage in plan:  # every stage's batch size, before hours of training in the first
        sharding.check_batch_size(stage.config.batch_size, mesh, config.train.grad_accum_steps)
    done = Checkpointer.steps_in(epath.Path(workdir) / "checkpoints")
    last = {}
    for stage in plan:
        if stage.index < len(plan) - 1 and done >= stage.end:
            continue  # finished before this (re)start
        previous = plan[stage.index - 1] if stage.index else None
        last, step = _train_stage(stage, previous, workdir, stop, devices, len(plan) > 1,
                                  started)
        started = None
        if step < stage.end:  # stopped early (SIGTERM)
            break
    return last


def _train_stage(stage, previous, workdir, stop, devices, staged: bool, started) -> tuple:
    """Trains one stage up to its last step -> (last metrics, the step reached)."""
    config = stage.config
    warn_on_idle_eval_config(config)
    workdir = epath.Path(workdir)
    enable_compile_cache(config.compile_cache_dir, workdir)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh, config.train.grad_accum_steps)
    setup = make_train_setup(config, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)
    if config.data.clusters.enabled:  # SimCLIP cluster batches: their own source
        from synthclip_jax.train.online_clusters import ClusterSource
        # A period's order depends on the model at its start: nothing may be drawn ahead.
        data = DevicePrefetch(ClusterSource(config, setup.graphdef, mesh, workdir), mesh, 0)
    else:
        data = DevicePrefetch(make_train_source(config), mesh, config.data.device_prefetch)

    state = restore_or_init(config, mesh, setup, checkpointer, data, previous)
    if started is not None:
        started()
    start = int(state["step"])
    resumed = checkpointer.latest_step() is not None
    provenance.record(workdir, start if resumed else None, devices=mesh.devices.flat)
    writer = MetricWriter(workdir, resume_step=start, wandb=wandb_log.maybe_start(
        config, workdir, enabled=jax.process_index() == 0))
    peak_flops = config.log.peak_tflops * 1e12 * mesh.devices.size  # 0: no mfu
    evaluator = Evaluator(config, setup.graphdef, mesh, workdir, resume_step=start)
    eval_every = config.eval.every_steps
    if eval_every:
        evaluator.load()
    train_step = make_train_step(config, setup, mesh)
    profiler = StepProfiler(workdir, start, config.profile_steps)

    total, log_every = stage.end, config.log.every_steps  # = total_steps without stages
    ckpt_every = config.checkpoint.every_steps
    if eval_every and start and (start % eval_every == 0 or start == total) and \
            evaluator.row_missing(start):
        # Killed (or stopped) after this step's checkpoint, before its evaluation was written.
        logging.info("step %d's evaluation is not in eval.jsonl: evaluating it first", start)
        evaluator(state["params"], start, ema_params=state.get("ema"))
    # (step, device metrics, its data wait, when it was dispatched) not yet seen on the host:
    # timing by dispatch keeps each row's wall time and data wait over the same steps.
    pending = None
    last = {}
    clock = {"time": time.perf_counter(), "step": start, "data_wait": 0.0}

    def host_side(step, device_metrics, data_wait, dispatched):
        nonlocal last
        clock["data_wait"] += data_wait
        last = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        last.update(data.stats())
        if last["nonfinite_in_a_row"] >= config.optim.max_nonfinite_in_a_row:
            raise NonFiniteError(
                f"step {step}: {int(last['nonfinite_in_a_row'])} steps in a row had non-finite "
                f"loss or gradients (limit optim.max_nonfinite_in_a_row="
                f"{config.optim.max_nonfinite_in_a_row}); last loss {last['loss']}. Lower lr, "
                "check the data, or use float32")
        if (log_every and step % log_every == 0) or step == total:
            steps = max(step - clock["step"], 1)
            elapsed = max(dispatched - clock["time"], 1e-9)
            rate = steps * config.batch_size / elapsed
            timing = {"step_sec": elapsed / steps, "data_wait_sec": clock["data_wait"] / steps}
            if peak_flops:
                timing["mfu"] = step_flops(config) / timing["step_sec"] / peak_flops
            clock.update(time=dispatched, step=step, data_wait=0.0)
            memory = device_memory()
            writer.write(step, {**last, "examples_per_sec": rate, **timing, **memory,
                                **({"stage": stage.index, "examples_seen":
                                    stages.examples_seen(stage, step)} if staged else {})})
            # the examples left over this rate (later stages may have other batch sizes)
            left = (total - step) * config.batch_size + stage.examples_after
            eta = left / max(rate, 1e-9)
            logging.info("step %d/%d  loss %.4f  lr %.3g  %.1f ex/s  step %.3fs (data %.3fs)%s%s"
                         "  eta %dh%02dm", step, total, last["loss"], last["lr"], rate,
                         timing["step_sec"], timing["data_wait_sec"],
                         f"  mfu {timing['mfu']:.1%}" if peak_flops else "", describe(memory),
                         eta // 3600, eta % 3600 // 60)

    def flush():
        nonlocal pending
        if pending is not None:
            host_side(*pending)
            pending = None

    step = start
    try:
        while step < total:
            profiler.update(step, state)
            waiting = time.perf_counter()
            data.prepare(step, state["params"])  # a source whose order follows the model
            batch = next(data)  # on the devices already (data.device_prefetch)
            data_wait = time.perf_counter() - waiting
            state, metrics = train_step(state, batch)
            step += 1
            flush()
            pending = (step, metrics, data_wait, time.perf_counter())
            stopping = stop.reached(step)
            if (ckpt_every and step % ckpt_every == 0) or stopping:
                flush()
                checkpointer.save(step, state, data.get_state())
                logging.info("checkpoint at step %d (written in the background)", step)
            if stopping:
                logging.warning("%s: checkpoint saved at step %d; exiting",
                                signal.Signals(stop.signal or signal.SIGTERM).name, step)
                break
            if eval_every and (step % eval_every == 0 or step == total):
                try:
                    evaluator(state["params"], step, ema_params=state.get("ema"))
                except Exception:
                    # Keep the steps trained since the last checkpoint before the error leaves.
                    if checkpointer.latest_step() != step:
                        checkpointer.save(step, state, data.get_state())
                        logging.error("evaluation failed at step %d; checkpoint saved", step)
                    raise
        flush()
        if checkpointer.latest_step() != step:
            checkpointer.save(step, state, data.get_state())
    finally:
        stop.close()
        profiler.stop()
        checkpointer.close()
        writer.close()
        evaluator.close()
    if jax.process_index() == 0:
        logging.info("curves: %s", plot_curves(workdir))
    return last, step
