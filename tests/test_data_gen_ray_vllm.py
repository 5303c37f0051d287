"""data_gen.captions --engine ray through vLLM, in the vLLM environment (.ci/run builds it, with
Ray, and exports SYNTHCLIP_VLLM_PYTHON): the Ray job, started by the stage itself on a local
cluster, writes the local engine's files byte for byte. A module of its own so that the Ray
cluster of tests/test_data_gen_ray.py is not running beside this one."""
import subprocess

import pytest

from tests.test_data_gen_text import VLLM_ENV, VLLM_PYTHON, caption_args, run
from tests.test_data_gen_text import tiny_model  # noqa: F401 (a fixture)
from tests.test_data_gen_ray import hidden_and_visible


def has_ray(python) -> bool:
    return python is not None and subprocess.run(
        [python, "-c", "import ray.data"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not has_ray(VLLM_PYTHON), reason="no vLLM environment with Ray: set "
                    "SYNTHCLIP_VLLM_PYTHON to a python with vllm and ray[data], as .ci/run does")
def test_captions_vllm_ray_equals_local(tiny_model, tmp_path):  # noqa: F811
    bank = tmp_path / "bank.txt"
    bank.write_text("cat\ndog\nred ball\npark\nblue sky\n")

    def args(out, *extra):  # sampled (temperature 0.7): the per-request seeds must carry over
        return [a if a != "transformers" else "vllm" for a in caption_args(
            tiny_model, bank, out, "--dtype", "float32", "--max-tokens", 8, *extra)]

    run("captions", *args(tmp_path / "local"), python=VLLM_PYTHON, env=VLLM_ENV)
    # its own local Ray cluster (no --ray-address), one actor holding vLLM's LLM
    run("captions", *args(tmp_path / "ray", "--engine", "ray", "--concurrency", 1),
        python=VLLM_PYTHON, env=VLLM_ENV)
    local = hidden_and_visible(tmp_path / "local")
    assert sorted(local) == [".fingerprint-captions.json", "captions-00000-of-00001.jsonl",
                             "captions-00000-of-00001.stats.json"]
    assert hidden_and_visible(tmp_path / "ray") == local
    assert len(local["captions-00000-of-00001.jsonl"].splitlines()) >= 10  # 5 concepts x 3
