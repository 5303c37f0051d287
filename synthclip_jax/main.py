"""Train (and resume) a CLIP/SigLIP model.

  python -m synthclip_jax.main --config=configs/demo_cpu.py --workdir=W [--config.KEY=VALUE ...]

Resumes from the latest checkpoint in --workdir if there is one. SIGTERM saves a checkpoint at
the next step boundary and exits 0; so does a first Ctrl-C, exiting 130 (a second one quits at
once). A run file that cannot be read (e.g. a config.json torn by a crash) exits 1 with one
line naming it. Writes W/config.json (the resolved config),
W/metrics.jsonl, W/eval.jsonl, W/tensorboard/ and W/checkpoints/. --mode=eval evaluates the
latest checkpoint in W on eval.zeroshot / eval.retrieval and appends to W/eval.jsonl.
--mode=compile compiles the train step for --config.compile.target (a TPU topology or GPU
nodes) on this host and writes compile_report.json (synthclip_jax/aot/; no --workdir needed).

A bad config (unknown key, bad choice, impossible relation) exits with status 2 and one line on
stderr naming the key, the value and the fix, before any device work; so does a resume with a
config that describes another run (resume_check.py). A workdir in use by another live trainer
(WORKDIR/lock.json, workdir_lock.py) exits with status 1 and one line naming it.
"""
import signal
import sys
import logging as pylogging

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from synthclip_jax.config import check as config_check, exit as config_exit
from synthclip_jax.config import cli_paths, resume_check
from synthclip_jax.config.error import ConfigError
from synthclip_jax.run.files import DamagedFile
from synthclip_jax.run.workdir_lock import WorkdirBusy, WorkdirLock

config_flags.DEFINE_config_file("config", None, "Config file (a get_config() .py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory: checkpoints, metrics, config.json.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "compile"],
                  "train: train (resuming) and evaluate on schedule; eval: only evaluate the "
                  "latest checkpoint; compile: compile the train step for "
                  "--config.compile.target on this host (synthclip_jax/aot/).")
flags.mark_flags_as_required(["config"])  # --workdir too, except for --mode=compile


class _QuietLibraries:
    """Orbax logs every file it renames at INFO; keep our progress lines readable."""

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def take_workdir(config, workdir):
    """Process 0 takes the workdir lock (None elsewhere); every process stops if it could not."""
    import jax
    from jax.experimental import multihost_utils

    lock, busy = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, config.resume.stale_lock_minutes)
            lock.acquire()
        except WorkdirBusy as error:
            busy = error
    if jax.process_count() > 1:
        taken = multihost_utils.broadcast_one_to_all(int(busy is None))
        if not taken and busy is None:
            busy = WorkdirBusy(f"process 0 found {workdir} in use by another trainer")
    if busy is not None:
        raise busy
    return lock


def main(argv):
    del argv
    training = flags.FLAGS.mode == "train"
    if flags.FLAGS.mode == "compile":  # needs no data: the batch is shapes only
        config_check.validate(flags.FLAGS.config, check_paths=False)
        from synthclip_jax.aot.run import main_mode
        sys.exit(main_mode(flags.FLAGS.config, flags.FLAGS.workdir))
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required (except with --mode=compile)")
    config_check.validate(flags.FLAGS.config, training=training)  # before any device work
    # It gets config.json, metrics and checkpoints: a file or a read-only place fails here.
    cli_paths.output_dir("main", "--workdir", flags.FLAGS.workdir)
    # Reads only: the new config.json is written once this run holds the workdir.
    resume = resume_check.check(flags.FLAGS.config, flags.FLAGS.workdir) if training else None
    logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
    from synthclip_jax.run import distributed
    distributed.maybe_initialize()  # first JAX call: joins the other hosts' processes
    import jax  # after absl parsed flags: jax reads its own flags/env at import

    from synthclip_jax.data import shapes_demo, worker_cleanup
    from synthclip_jax.evaluate.latest import evaluate_latest
    from synthclip_jax.train import loop

    config = flags.FLAGS.config
    workdir = epath.Path(flags.FLAGS.workdir)
    if not training:
        shapes_demo.prepare(config, workdir)  # no-op unless data.procedural asks for it
        results = evaluate_latest(config, workdir)
        logging.info("eval: %s", {k: round(v, 4) for k, v in results.items()})
        return
    lock = take_workdir(config, workdir)
    worker_cleanup.reap_orphans(workdir)  # workers of a killed trainer of this workdir
    worker_cleanup.tag_children(workdir)
    stop = loop.StopRequest()
    try:
        shapes_demo.prepare(config, workdir)  # under the lock: it may re-render WORKDIR/data
        logging.info("devices: %d x %s, processes: %d", jax.device_count(),
                     jax.devices()[0].device_kind, jax.process_count())
        # config.json once the run has started: a resume refused on the way leaves it as it was.
        last = loop.train(config, workdir, stop=stop,
                          started=resume.write_config if lock is not None else None)
    finally:  # also after SIGTERM: the loop saves, stops and returns
        if lock is not None:
            lock.release()
    if stop.signal == signal.SIGINT:  # saved; the status of an interrupted command
        logging.warning("interrupted (Ctrl-C): checkpoint saved, exiting with status 130")
        sys.exit(130)
    logging.info("done: %s", {k: round(v, 5) for k, v in last.items()})
    if jax.process_index() == 0:
        print(f"\nTrained model in {workdir}. Export it to OpenCLIP (PyTorch) with:\n"
              f"  python -m tools.convert_to_openclip --workdir {workdir} --out {workdir}/openclip\n"
              f"Evaluate the latest checkpoint again with --mode=eval.", flush=True)


if __name__ == "__main__":
    try:
        app.run(main, flags_parser=config_exit.parse_flags)
    except ConfigError as bad:  # from the door check or from the checks that need the devices
        config_exit.exit_bad_config(str(bad))
    except WorkdirBusy as busy:
        print(f"workdir busy: {busy}", file=sys.stderr, flush=True)
        sys.exit(1)
    except DamagedFile as damaged:  # a run file a crash or an edit left unreadable
        print(f"error: {damaged}", file=sys.stderr, flush=True)
        sys.exit(1)
