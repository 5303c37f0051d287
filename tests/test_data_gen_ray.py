"""data_gen.images and data_gen.captions --engine ray on a local Ray cluster (one per module:
it takes seconds to start): the same files as the local engine byte for byte (tiny random
Stable Diffusion; tiny random Llama with the transformers backend, and through vLLM in its own
environment), and a Ray job SIGKILLed part-way then run again (shapes backend: the engine, not
the model, is what a kill tests) completes with no duplicate and no missing record."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_gen import captions as captions_stage
from data_gen import images as images_stage
from tests.test_data_gen_chain import kill_when, pair_indices, visible_files
from tests.test_data_gen_images import tiny_pipeline
from tests.test_data_gen_text import caption_args, hidden_and_visible
from tests.test_data_gen_text import tiny_model  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address():
    """A 2-CPU local cluster; its address lets a driver in another process join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_images_ray_equals_local_byte_for_byte(ray_address, tmp_path):
    model = tiny_pipeline(tmp_path / "tiny-sd")
    captions = tmp_path / "kept.jsonl"
    rows = [{"caption": f'a "photo" of object {i}', "concept_ids": [i]} for i in range(7)]
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [str(a) for a in (
        "--captions", captions, "--model", model, "--height", 64, "--width", 64,
        "--save-size", 32, "--steps", 2, "--chunk-size", 3, "--batch-size", 2,
        "--dtype", "float32")]
    images_stage.main([*common, "--out", str(tmp_path / "local")])
    images_stage.main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray",
                       "--concurrency", "1"])  # one actor: a second costs a torch import
    local, on_ray = visible_files(tmp_path / "local"), visible_files(tmp_path / "ray")
    assert sorted(local) == ["images_settings.json", "pairs-00000.tar", "pairs-00001.tar",
                             "pairs-00002.tar"]
    assert on_ray.keys() == local.keys()
    for name in local:
        assert on_ray[name] == local[name], name


@pytest.mark.slow
def test_images_ray_job_killed_then_rerun(ray_address, tmp_path):
    args = ["--shapes", "400", "--chunk-size", "8", "--save-size", "32"]
    ref = tmp_path / "ref"
    images_stage.main([*args, "--out", str(ref)])  # local engine, uninterrupted
    out = tmp_path / "out"
    ray_args = [*args, "--out", str(out), "--engine", "ray", "--ray-address", ray_address,
                "--concurrency", "2"]
    # The driver runs in its own process and is SIGKILLed once the first chunk is written:
    # Ray then ends the job's actors (a chunk they were writing stays a hidden temporary).
    driver = subprocess.Popen([sys.executable, "-m", "data_gen.images", *ray_args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = kill_when(driver, lambda: any(out.glob("pairs-*.tar")), timeout=180)
    time.sleep(1.0)  # the dead job's actors are stopped by Ray, not at once
    left = visible_files(out)
    done = [n for n in left if n.startswith("pairs-")]
    if killed:
        assert 0 < len(done) < 50, done
    reference = visible_files(ref)
    for name, data in left.items():  # whatever the killed job left is final
        assert data == reference[name], name
    images_stage.main(ray_args)
    assert visible_files(out) == reference  # all 50 pairs files + settings, byte for byte
    assert sorted(pair_indices(out)) == list(range(400))  # none missing, none twice
    print(f"ray job killed: {killed} after {len(done)}/50 chunks; leftovers: "
          f"{sorted(p.name for p in out.iterdir() if '.tmp-' in p.name)}; pid {os.getpid()}")


@pytest.mark.slow
def test_captions_ray_equals_local_transformers(ray_address, tiny_model, tmp_path):  # noqa: F811
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\npark\nblue sky\n")

    def args(out, *extra):
        return [str(a) for a in caption_args(tiny_model, bank, out, "--num-workers", 3,
                                             "--batch-size", 2, "--max-tokens", 8, *extra)]

    for w in range(3):
        captions_stage.main(args(tmp_path / "local", "--worker-index", w))
    # worker 1's file already there: the Ray job must keep it and write the other two
    (tmp_path / "ray").mkdir()
    for name in (".fingerprint-captions.json", "captions-00001-of-00003.jsonl",
                 "captions-00001-of-00003.stats.json"):
        (tmp_path / "ray" / name).write_bytes((tmp_path / "local" / name).read_bytes())
    kept = (tmp_path / "ray" / "captions-00001-of-00003.jsonl").stat().st_mtime_ns
    captions_stage.main(args(tmp_path / "ray", "--engine", "ray", "--concurrency", "1"))
    local = hidden_and_visible(tmp_path / "local")
    assert len(local) == 7  # 3 x (jsonl + stats) + fingerprint
    assert hidden_and_visible(tmp_path / "ray") == local
    assert (tmp_path / "ray" / "captions-00001-of-00003.jsonl").stat().st_mtime_ns == kept


def test_engine_flags_checked_and_ray_imported_only_for_ray(tmp_path):
    bad = [(images_stage.parse_args, ["--shapes", "4", "--out", "o", "--concurrency", "2"]),
           (images_stage.parse_args, ["--shapes", "4", "--out", "o", "--engine", "ray",
                                      "--concurrency", "0"]),
           (captions_stage.parse_args, ["--concepts", "c", "--out", "o", "--engine", "ray",
                                        "--worker-index", "1", "--num-workers", "2"])]
    for parse, argv in bad:
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 2, argv
    code = ("import sys; from data_gen import images; images.main(['--shapes', '4', '--out', "
            f"{str(tmp_path / 'local')!r}]); assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
