"""Runs benchmark jobs (training runs as subprocesses, one log file each), a few at a time;
shared by the ablation scripts."""
import subprocess
import sys
import time


def run_all(jobs, parallel):
    """jobs: [(label, command, log path)]; at most `parallel` at a time."""
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < parallel:
            label, cmd, log_path = pending.pop(0)
            log = open(log_path, "w")
            print(f"[{time.strftime('%H:%M:%S')}] start {label}: {' '.join(cmd[1:])}",
                  flush=True)
            running[label] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log,
                              log_path)
        time.sleep(5)
        for label, (proc, log, log_path) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[label]
                print(f"[{time.strftime('%H:%M:%S')}] {label} exited {proc.returncode}",
                      flush=True)
                if proc.returncode:
                    sys.exit(f"{label} failed: see {log_path}")
