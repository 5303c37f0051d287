"""Index files that lie (issue 29, class 2), stages that do nothing or die on the wrong kind of
path (class 5), and config values of the wrong shape (class 6). Each case is CLEAR (non-zero
exit, one line naming the input and the fix, no traceback) or RIGHT (checked output). Stages
run in-process through their main()s; config overrides go through ml_collections' own flag
parser, as on the command line."""
import logging
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from data_gen.concepts import BUILTIN, load_bank
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import shard_files
from synthclip_jax.data.shard_files import ShardWriter, TFRecordShards, shard_name
from synthclip_jax.data.shard_index import COMBINED, open_shards, write_combined_index
from synthclip_jax.data.tfrecord import encode_example
from tests.test_bad_inputs import invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- class 2: tfrecord_index.npz ---------------------------------------------------------------

def shards(folder, n=12, num_shards=2):
    """Records of varied sizes (so swapped lengths show), their own indexes, a combined one."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        with ShardWriter(str(folder / shard_name("pairs", s, num_shards))) as w:
            for i in range(s, n, num_shards):
                w.write(encode_example(image=bytes(10 + 7 * i), captions=[f"c{i}"], key=str(i)))
    write_combined_index(folder)
    return str(folder / "*.tfrecord")


def records(pattern):
    ds = open_shards(pattern)
    return [ds[i] for i in range(len(ds))]


def reference(pattern):
    """The records read through each shard's own .index only (no combined index)."""
    ds = TFRecordShards(shard_files.glob_shards(pattern))
    return [ds[i] for i in range(len(ds))]


def rewrite_npz(path, drop=None, change=None):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    if change:
        change(arrays)
    np.savez(path, **arrays)


DAMAGES = {
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "missing lengths array": lambda p: rewrite_npz(p, drop="lengths"),
    "counts that do not add up": lambda p: rewrite_npz(
        p, change=lambda a: a.update(counts=a["counts"] + 1)),
    "lengths swapped within a shard": lambda p: rewrite_npz(
        p, change=lambda a: a.update(lengths=np.concatenate([a["lengths"][:6][::-1],
                                                             a["lengths"][6:]]))),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_combined_index_falls_back_with_a_warning(tmp_path, caplog, damage):
    pattern = shards(tmp_path / "d")
    expected = reference(pattern)
    DAMAGES[damage](tmp_path / "d" / COMBINED)
    with caplog.at_level(logging.WARNING):
        assert records(pattern) == expected
    (warning,) = [r.getMessage() for r in caplog.records if COMBINED in r.getMessage()]
    assert f"python -m synthclip_jax.data.shard_index {tmp_path / 'd'}" in warning


def test_shard_files_rebuilds_the_indexes_of_a_folder(tmp_path, capsys):
    """The rebuild command the messages suggest, given the folder (it used to crash)."""
    pattern = shards(tmp_path / "d")
    expected = reference(pattern)
    for index in (tmp_path / "d").glob("*.index"):
        index.write_text("garbage\n")
    shard_files.main([str(tmp_path / "d")])
    assert "indexed 6 records" in capsys.readouterr().out
    assert reference(pattern) == expected


def test_data_train_that_is_a_folder_is_named_with_the_glob(tmp_path):
    shards(tmp_path / "d")
    config = parse(f"--config.data.train={tmp_path / 'd'}")
    with pytest.raises(ConfigError, match=rf"data.train='{tmp_path / 'd'}' is a directory.*"
                                          rf"--config.data.train='{tmp_path / 'd'}/\*.tfrecord'"):
        validate(config)


# --- class 5: the wrong kind of path -----------------------------------------------------------

def clear(code, text, *names):
    assert code != 0 and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    for name in names:
        assert str(name) in text, (name, text)


def test_concepts_out_an_existing_empty_folder_writes_the_bank_inside(tmp_path, capsys):
    """It said 'exists, skipping' and wrote nothing; the next stage then crashed."""
    (tmp_path / "bank").mkdir()
    code, text = invoke("concepts", ["--out", tmp_path / "bank", "--builtin"], capsys)
    assert code == 0, text
    bank = tmp_path / "bank" / "concepts.txt"
    assert bank.read_text().splitlines() == load_bank(BUILTIN)
    assert f"writing {bank}" in text


def a_file(tmp_path):
    (tmp_path / "plain").write_text("not a folder\n")
    return tmp_path / "plain"


def a_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


CASES = {  # stage, argv(tmp_path), what the line must name
    "concepts --input a folder": ("concepts", lambda t: ["--out", t / "c.txt", "--input",
                                                         a_folder(t)], "is a folder, not a file"),
    "concepts --out under a file": ("concepts", lambda t: ["--out", a_file(t) / "c.txt",
                                                           "--builtin"], "is a file, not a folder"),
    "captions --concepts a folder": ("captions", lambda t: ["--concepts", a_folder(t), "--out",
                                                            t / "caps", "--backend",
                                                            "transformers"],
                                     "is a folder, not a file"),
    "captions --out a file": ("captions", lambda t: ["--concepts", BUILTIN, "--out", a_file(t),
                                                     "--backend", "transformers"],
                              "is a file, not a folder"),
    "balance --concepts a folder": ("balance", lambda t: ["--captions", f"{t}/*.jsonl",
                                                          "--concepts", a_folder(t), "--out",
                                                          t / "out"], "is a folder, not a file"),
    "balance --out a file": ("balance", lambda t: ["--captions", f"{t}/*.jsonl", "--concepts",
                                                   BUILTIN, "--out", a_file(t)],
                             "is a file, not a folder"),
    "images --out a file": ("images", lambda t: ["--shapes", 4, "--out", a_file(t)],
                            "is a file, not a folder"),
    "write --out a file": ("write", lambda t: ["--pairs", f"{t}/*.tar", "--out", a_file(t),
                                               "--num-shards", 1], "is a file, not a folder"),
    "write --concepts a folder": ("write", lambda t: ["--pairs", f"{t}/*.tar", "--out", t / "o",
                                                      "--num-shards", 1, "--concepts",
                                                      a_folder(t)], "is a folder, not a file"),
    "import_pairs --out a file": ("import_pairs", lambda t: ["--input", t, "--out", a_file(t),
                                                             "--num-shards", 1],
                                  "is a file, not a folder"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_wrong_kind_of_path_is_named(tmp_path, capsys, case):
    stage, argv, says = CASES[case]
    code, text = invoke(stage, argv(tmp_path), capsys)
    clear(code, text, f"{stage}: ", says)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_out_is_named(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    code, text = invoke("images", ["--shapes", 4, "--out", tmp_path / "ro" / "out"], capsys)
    clear(code, text, "cannot be written", tmp_path / "ro")


@pytest.mark.slow
def test_main_workdir_that_is_a_file_is_named(tmp_path):
    """Through the process: one line and status 1, before any device work."""
    proc = subprocess.run([sys.executable, "-m", "synthclip_jax.main", "--config=configs/demo_cpu.py",
                           f"--workdir={a_file(tmp_path)}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"main: --workdir {tmp_path / 'plain'} is a file, not a folder" in proc.stderr


# --- class 6: tuple and path config keys of the wrong shape ------------------------------------

def parse(*overrides):
    """The config as `python -m synthclip_jax.main --config=configs/demo_cpu.py OVERRIDES`."""
    argv = ["main", f"--config={ROOT}/configs/demo_cpu.py", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv)  # it defines the --config.KEY flags it sees
    values(argv)
    return values.config


SHAPES = {
    "--config.data.mean=(0.5,0.5)": "data.mean=(0.5, 0.5) has 2 values, not 3",
    "--config.data.std=(0.2,0.0,0.2)": "data.std=(0.2, 0.0, 0.2) holds 0.0, must be > 0.0",
    "--config.data.mean=(128,128,128)": "data.mean=(128, 128, 128) holds 128, must be <= 1.0",
    "--config.data.rrc_scale=0.5": "data.rrc_scale=(0.5,) has 1 values, not 2",
    "--config.data.rrc_scale=(0.0,1.0)": "data.rrc_scale=(0.0, 1.0) holds 0.0, must be > 0.0",
    "--config.eval.retrieval_ks=()": "eval.retrieval_ks=() has 0 values, fewer than 1",
    "--config.eval.retrieval_ks=(1,0)": "eval.retrieval_ks=(1, 0) holds 0, must be >= 1",
    "--config.eval.linear_probe_shots=(1.5,)": "eval.linear_probe_shots=(1.5,) holds 1.5, "
                                               "not an int",
    "--config.data.clusters.warmup_epochs=(-1,)": "data.clusters.warmup_epochs=(-1,) holds -1",
}


@pytest.mark.parametrize("override", SHAPES, ids=list(SHAPES))
def test_tuple_key_of_the_wrong_shape_is_refused_at_the_door(override):
    with pytest.raises(ConfigError) as raised:
        validate(parse(override), check_paths=False)
    message = str(raised.value)
    assert SHAPES[override] in message and "\n" not in message
    key = override.split("=")[0].removeprefix("--config.")
    assert raised.value.key == key and f"set --config.{key}=" in message


def test_json_config_with_a_list_of_the_wrong_length_is_refused():
    """A config.json (resume, evaluate) holds lists, not tuples: checked the same."""
    import ml_collections
    from synthclip_jax.config.base import base
    config = ml_collections.ConfigDict(base().to_dict())
    config.data.mean = [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match=r"data.mean=\(0.5, 0.5, 0.5, 0.5\) has 4 values"):
        validate(config, check_paths=False)


def test_combined_index_arrays_written_by_numpy_are_read(tmp_path):
    """The writer's own layout (np.savez with fixed times) stays readable: no false alarm."""
    pattern = shards(tmp_path / "d")
    with zipfile.ZipFile(tmp_path / "d" / COMBINED) as z:
        assert sorted(z.namelist()) == ["counts.npy", "lengths.npy", "names.npy", "sizes.npy"]
    assert records(pattern) == reference(pattern)
