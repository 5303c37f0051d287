"""data_gen.balance at scale: captions/s and peak RSS of `--phase count` and `--phase sample`
with a large concept bank, and the duplicate set's memory against a Python set (same run).

  python -m tools.bench.balance [--bank 500000] [--captions 1000000] [--files 4] [--project 30000000]

Writes a bank of --bank entries (one-, two- and three-word concepts, as MetaCLIP's ~500k
list) and --captions generated captions (each naming 1-3 bank entries among filler words, 2%
exact repeats) in --files JSONL files, then runs each phase as its own process and reads its
peak RSS from the kernel (wait4). Prints captions/s and peak RSS per phase, and projects them
to --project captions: time linearly; memory as the measured peak plus the duplicate set's
growth (measured below: bytes per digest of data_gen.digest_set vs a Python set of ints).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORDS = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ar", "el", "iton", "oma", "us", "yx")]


def make_inputs(folder: Path, bank_size: int, captions: int, files: int, seed: int = 0):
    rng = random.Random(seed)
    bank = set()
    while len(bank) < bank_size:
        n = rng.choice((1, 1, 2, 3))
        bank.add(" ".join(f"{rng.choice(WORDS)}{rng.randrange(10**5)}" for _ in range(n)))
    bank = sorted(bank)
    (folder / "bank.txt").write_text("\n".join(bank) + "\n")
    outs = [open(folder / f"captions-{f:03d}.jsonl", "w") for f in range(files)]
    previous = []
    for i in range(captions):
        if previous and rng.random() < 0.02:
            caption = rng.choice(previous)
        else:
            words = [rng.choice(WORDS) for _ in range(rng.randrange(8, 20))]
            for _ in range(rng.randrange(1, 4)):
                words.insert(rng.randrange(len(words)), rng.choice(bank))
            caption = "A photo of " + " ".join(words) + "."
            if len(previous) < 10000:
                previous.append(caption)
        outs[i % files].write(json.dumps({"caption": caption, "concept": "x"}) + "\n")
    for f in outs:
        f.close()


def run_phase(folder: Path, phase: str):
    cmd = [sys.executable, "-m", "data_gen.balance", "--captions", str(folder / "captions-*.jsonl"),
           "--concepts", str(folder / "bank.txt"), "--out", str(folder / "out"), "--phase", phase,
           "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"balance --phase {phase} failed:\n{err}")
    return seconds, usage.ru_maxrss / 1024  # KiB -> MiB (Linux)


DIGEST_MEMORY = """
import random, resource, sys
from data_gen.digest_set import DigestSet
n, kind = int(sys.argv[1]), sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = DigestSet() if kind == "digest_set" else set()
r = random.Random(0)
for _ in range(n):
    s.add(r.getrandbits(64))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / n)
"""


def bytes_per_digest(kind: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", DIGEST_MEMORY, str(n), kind], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", type=int, default=500_000)
    p.add_argument("--captions", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--project", type=int, default=30_000_000)
    p.add_argument("--digests", type=int, default=2_000_000,
                   help="digests inserted to measure the duplicate set's bytes per digest")
    args = p.parse_args(argv)
    ours, peer = (bytes_per_digest(kind, args.digests) for kind in ("digest_set", "set"))
    print(f"duplicate set, {args.digests} digests: {ours:.1f} B/digest (data_gen.digest_set) vs "
          f"{peer:.1f} B/digest (Python set); ratio ours/peer = {ours / peer:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_inputs(folder, args.bank, args.captions, args.files)
        for phase in ("count", "sample"):
            seconds, rss = run_phase(folder, phase)
            rate = args.captions / seconds
            projected_rss = rss + ours * (args.project - args.captions) / 2**20
            print(f"phase {phase}: {args.captions} captions, bank {args.bank}: {rate:.0f} "
                  f"captions/s, peak RSS {rss:.0f} MiB; projected to {args.project}: "
                  f"{args.project / rate / 3600:.2f} h per worker, peak RSS ~"
                  f"{projected_rss:.0f} MiB")


if __name__ == "__main__":
    main()
