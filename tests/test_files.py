"""synthclip_jax.run.files: atomic writes and JSON lines, and that the vLLM stage (its own
environment: no jax, numpy or PIL) can import them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthclip_jax.run.files import atomic_path, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_path_renames_on_success_only_and_clears_stale_temporaries(tmp_path):
    out = tmp_path / "sub" / "out.txt"
    stale = tmp_path / "sub" / ".out.txt.tmp-99999"
    stale.parent.mkdir()
    stale.write_text("left by a killed worker")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert not out.exists() and list(out.parent.iterdir()) == []
    with atomic_path(out) as tmp:
        tmp.write_text("whole")
    assert out.read_text() == "whole" and list(out.parent.iterdir()) == [out]


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert list(read_jsonl(path)) == list(read_jsonl(str(path))) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="rows.jsonl line 2: not JSON"):
        list(read_jsonl(path))


def top_level_modules_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    return set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.split())


def test_vllm_stage_imports_only_the_standard_library_and_ours():
    # Against a bare interpreter's start-up modules (site hooks differ between machines).
    added = top_level_modules_after("import data_gen.captions") - top_level_modules_after("pass")
    assert added - set(sys.stdlib_module_names) == {"data_gen", "synthclip_jax"}
