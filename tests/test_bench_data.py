"""Smoke tests of the data benchmarks (output format only, tiny sizes, no timing assertions),
and the duplicate set they measure against Python's set."""
import random
import re

from data_gen.digest_set import DigestSet
from tests.test_bench import run_module


def test_digest_set_matches_python_set():
    rng = random.Random(0)
    values = [rng.getrandbits(64) | 2 for _ in range(5000)] + [2, 3 << 16, 3 << 17]  # not 0/1
    values += rng.sample(values, 2000)  # repeats
    ours, reference = DigestSet(capacity=8), set()  # small: grows many times
    for v in values:
        assert ours.add(v) == (v not in reference)
        reference.add(v)
    assert len(ours) == len(reference)
    assert all(v in ours for v in reference) and (rng.getrandbits(64) | 2) not in ours


def test_import_bench_output_format():
    out = run_module("tools.bench.import", "--pairs", "6", timeout=300)
    assert re.search(r"^pass-through .*: \d+ pairs/s per core; 30000000 pairs on 32 cores: "
                     r"[\d.]+ h$", out, re.M), out
    assert re.search(r"^ratio pass-through/re-encode = \d+\.\d\d$", out, re.M), out


def test_balance_bench_output_format():
    out = run_module("tools.bench.balance", "--bank", "300", "--captions", "400", "--digests",
                     "20000", timeout=300)
    assert re.search(r"ratio ours/peer = \d+\.\d\d$", out, re.M), out
    for phase in ("count", "sample"):
        assert re.search(rf"^phase {phase}: 400 captions, bank 300: \d+ captions/s, peak RSS "
                         r"\d+ MiB", out, re.M), out
