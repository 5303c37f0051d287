"""Crash consistency, driven from one process (tests/test_crash_consistency.py runs it):

    python -m tests.crash_driver OUT_DIR KILLS SEED

imports jax and the trainer once (no backend started: fork is safe), then forks trainers of a
tiny run with a checkpoint every 2 steps, a metrics row every step and an evaluation every 4:
first an uninterrupted run (`straight`), then the same run in `crashed`, whose trainers are
killed with SIGKILL at random moments after their restore (training, saving, writing metrics
and eval rows, evaluating, finishing) until KILLS kills have landed, after which one last
trainer finishes it. A fork per trainer (instead of a new interpreter) keeps each restart to the
restore and a compile read from the persistent cache. Prints one JSON line: the kills, the step
each trainer started from, and the seconds taken.
"""
import json
import os
import random
import signal
import sys
import time

import numpy as np
from PIL import Image

STEPS = 8


def make_config(out):
    from tests.test_train_parallel import tiny_train_config
    c = tiny_train_config()
    c.total_steps, c.batch_size, c.log.every_steps = STEPS, 8, 1
    c.checkpoint.every_steps, c.checkpoint.keep = 2, 2
    c.model.text.update(vocab_size=49408, depth=1)  # the zero-shot prompts' BPE tokens
    c.model.image.depth = 1
    c.eval.update(every_steps=4, zeroshot=str(zeroshot_folder(out)), templates="simple",
                  batch_size=8)
    c.compile_cache_dir = os.path.join(out, "compile_cache")
    return c


def zeroshot_folder(out):
    root = os.path.join(out, "zeroshot")
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        Image.new("RGB", (16, 16), color).save(os.path.join(root, name, "a.png"))
    return root


def trainer(config, workdir, ready_fd):
    """The child: resume or start, as main.py does (config.json once started), and train."""
    import jax
    from synthclip_jax.config import resume_check
    from synthclip_jax.train import loop
    plan = resume_check.check(config, workdir)

    def started():
        plan.write_config()
        os.write(ready_fd, b"s")

    loop.train(config, workdir, devices=jax.devices()[:1], started=started)


def fork_trainer(config, workdir):
    """(pid, read end of a pipe that gets a byte once the trainer has restored)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            trainer(config, workdir, write_fd)
        except BaseException as error:  # noqa: BLE001 - reported through the exit status
            print(f"trainer failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            code = 3
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def wait_started(read_fd, pid) -> bool:
    """True once the trainer restored; False if it ended first."""
    data = os.read(read_fd, 1)
    return data == b"s"


def run_straight(config, workdir) -> float:
    """Trains `workdir` uninterrupted; returns the seconds from restore to exit."""
    pid, read_fd = fork_trainer(config, workdir)
    assert wait_started(read_fd, pid), "the straight run ended before it started"
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0, f"straight run failed ({status})"
    return time.monotonic() - started


def first_step(workdir) -> int:
    steps = [int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit()] \
        if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    return max(steps, default=0)


def run_crashed(config, workdir, kills: int, seed: int, run_seconds: float):
    """`run_seconds`: how long a whole run lasts after its restore. A run resumed at step s has
    (STEPS - s) / STEPS of it left, and kills are drawn over that (plus a little, for the end).
    A run that finishes unkilled re-measures it: the machine's load, and so the speed, changes
    during a CI run, and a stale, long estimate would let most trainers finish unkilled, each
    of which costs a whole rerun."""
    rng = random.Random(seed)
    landed, starts, delays, startup = 0, [], [], []
    while True:
        start_step = first_step(workdir)
        starts.append(start_step)
        forked = time.monotonic()
        pid, read_fd = fork_trainer(config, workdir)
        ready = wait_started(read_fd, pid)
        restored = time.monotonic()
        startup.append(round(restored - forked, 2))
        os.close(read_fd)
        left = (STEPS - start_step) / STEPS
        # A run resumed at the end (killed while finishing) is left to finish: it shows the
        # restart there works, and killing it again would only pile the kills up at the end.
        if landed < kills and ready and left > 0:
            # anywhere from the restore to just after the end
            delay = rng.uniform(0, run_seconds * (left + 0.1))
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.002)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                landed += 1
                delays.append(round(delay, 3))
                continue
            code = os.waitstatus_to_exitcode(status)
        else:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"a trainer restarted after a kill failed (exit {code}) in "
                             f"{workdir}; started from steps {starts}")
        if landed >= kills:
            print("seconds to restore:", startup, file=sys.stderr)
            return landed, starts, delays
        if ready and left > 0:
            run_seconds = (time.monotonic() - restored) / left
        # finished before all the kills landed: run it again from the start
        import shutil
        shutil.rmtree(workdir)


def main():
    out, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = make_config(out)
    t0 = time.perf_counter()
    run_straight(config, os.path.join(out, "straight"))  # compiles cold: fills the cache
    # Kills land anywhere from the restore to the end of a run, as long as a warm one lasts
    # after its restore (measured on a second run): fewer land after the end, each of which
    # costs a whole rerun.
    run_seconds = run_straight(config, os.path.join(out, "timing"))
    landed, starts, delays = run_crashed(config, os.path.join(out, "crashed"), kills, seed,
                                         run_seconds)
    print(json.dumps({"kills": landed, "starts": starts, "delays": delays,
                      "run_seconds": round(run_seconds, 2),
                      "total_seconds": round(time.perf_counter() - t0, 2)}), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
