"""The docs cannot drift from the code: every `python -m MODULE` shown in README.md and docs/*.md
exists and answers `--help`, every config key the docs name exists in the base config, every
`configs/NAME.py` they name exists, every link between the pages resolves, and README's test
command is the one CI runs.

The `--help` checks run in ONE interpreter (runpy over the modules, SystemExit caught), not one
per command: importing jax, torch and the rest once keeps this file to seconds.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("synthclip_jax", "tools", "data_gen")
OUTSIDE = {"pytest", "pip", "venv"}  # other projects' modules the docs show; not checked here
COMMAND = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
CONFIG_FLAG = re.compile(r"--config\.([a-z_][\w.]*)")  # --config.KEY=VALUE: placeholders are upper case
GROUPS = ("model", "data", "eval", "loss", "optim", "train", "mesh", "checkpoint", "log",
          "resume", "compile")
ASSIGNED = re.compile(r"`((?:%s)\.[a-z_][\w.]*)=" % "|".join(GROUPS))  # `data.read_mode=coalesced`
KEY_TABLE_HEADER = "| key | meaning |"

# Run in a fresh interpreter: each module as __main__ with `--help`; prints {module: [code, output]}.
# absl programs define their flags on one global registry: the flags a module defined are removed
# before the next one runs (absl's own help and logging flags stay).
HELP_RUNNER = r"""
import ast, contextlib, importlib.util, io, json, runpy, sys, warnings
from absl import flags


def docstring_head(module):
    try:
        spec = importlib.util.find_spec(module)
        if spec and spec.submodule_search_locations:  # a package runs its __main__
            spec = importlib.util.find_spec(module + ".__main__")
        with open(spec.origin) as f:
            return (ast.get_docstring(ast.parse(f.read())) or "").strip().split("\n")[0]
    except Exception:
        return ""


results = {}
for module in sys.argv[1:]:
    before = set(flags.FLAGS)
    sys.argv = [module, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as error:  # an import that fails, a module that is not there
        code, out = -1, io.StringIO(f"{type(error).__name__}: {error}")
    absl_own = {name for module_name, defined in flags.FLAGS.flags_by_module_dict().items()
                if module_name.startswith("absl") for name in (f.name for f in defined)}
    for name in set(flags.FLAGS) - before - absl_own:
        delattr(flags.FLAGS, name)
    results[module] = [code, out.getvalue(), docstring_head(module)]
print("HELP-RESULTS " + json.dumps(results))
"""


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "tests" / "README.md"] + sorted(
        (ROOT / "docs").glob("*.md")) + sorted((ROOT / "tools").glob("*/README.md"))


def documented_modules(texts) -> set[str]:
    return {m for text in texts for m in COMMAND.findall(text)}


def help_answers(code: int, output: str, docstring_head: str) -> bool:
    """argparse exits 0 with its usage line; a plain program exits 0 printing its docstring
    (whose first line must show); absl prints its help and exits 1 by design, ending with its
    pointer to --helpfull."""
    if code == 0:
        return "usage:" in output.lower() or bool(docstring_head and docstring_head in output)
    return code == 1 and "Try --helpfull to get a list of all flags." in output


def run_help(modules, extra_path=None) -> dict:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", HELP_RUNNER, *sorted(modules)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("HELP-RESULTS ")), None)
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(line[len("HELP-RESULTS "):])


def failures(modules) -> list[str]:
    unknown = sorted(m for m in modules if m.split(".")[0] not in OURS + tuple(OUTSIDE))
    ours = {m for m in modules if m.split(".")[0] in OURS}
    bad = [f"{m}: not a module of this repository or a known tool" for m in unknown]
    for module, (code, output, docstring_head) in sorted(run_help(ours).items()):
        if not help_answers(code, output, docstring_head):
            bad.append(f"python -m {module} --help: exit {code}: {output.strip()[-300:]}")
    return bad


def test_every_documented_command_answers_help():
    modules = documented_modules(p.read_text() for p in doc_files())
    assert {"synthclip_jax.main", "synthclip_jax.evaluate", "data_gen.import_pairs",
            "tools.convert_to_openclip"} <= modules  # the extraction found the commands
    assert failures(modules) == []


def test_a_command_that_drifted_fails(tmp_path):
    doc = "Run `python -m synthclip_jax.no_such_stage --out x` or\n`python -m\nfoo.bar`."
    assert documented_modules([doc]) == {"synthclip_jax.no_such_stage", "foo.bar"}
    bad = failures(documented_modules([doc]) | {"synthclip_jax.config.base"})
    assert len(bad) == 3, bad  # not there; not ours; runs but answers nothing to --help
    assert any("no_such_stage" in b for b in bad) and any("foo.bar" in b for b in bad)
    # a program that takes --help for its argument and goes on working
    (tmp_path / "drifted.py").write_text('"""Counts things."""\nimport sys\nprint(sys.argv[1:])\n')
    (code, output, head), = run_help({"drifted"}, extra_path=tmp_path).values()
    assert (code, output.strip(), head) == (0, "['--help']", "Counts things.")
    assert not help_answers(code, output, head)


def table_keys(text: str) -> set[str]:
    """First-column keys of every `| key | meaning |` table: `a.b`, `a.b/c/d` (= a.b, a.c, a.d),
    `a.*` (the group a)."""
    keys, inside = set(), False
    for line in text.splitlines():
        if line.startswith(KEY_TABLE_HEADER):
            inside = True
        elif inside and not line.startswith("|"):
            inside = False
        elif inside and not line.startswith("|---"):
            for key in re.findall(r"`([^`]+)`", line.split("|")[1]):
                head, *more = key.split("/")
                keys.add(head)
                keys.update(head.rsplit(".", 1)[0] + "." + m for m in more)
    return keys


def documented_keys(texts) -> set[str]:
    keys = set()
    for text in texts:
        keys |= table_keys(text) | set(CONFIG_FLAG.findall(text)) | set(ASSIGNED.findall(text))
    return {k.rstrip(".") for k in keys}


def missing_keys(keys, config) -> list[str]:
    missing = []
    for key in sorted(keys):
        node = config
        for part in key.removesuffix(".*").split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                missing.append(key)
                break
            node = node[part]
    return missing


@pytest.fixture(scope="module")
def base_config():
    from synthclip_jax.config.base import base
    return base()


def test_every_documented_config_key_exists(base_config):
    keys = documented_keys(p.read_text() for p in doc_files())
    assert {"model.image.depth", "data.train", "train.stages", "optim.eps", "mesh.tensor"} <= keys
    assert len(keys) > 100
    assert missing_keys(keys, base_config) == []


def test_a_key_that_drifted_fails(base_config):
    doc = ("| key | meaning |\n|---|---|\n| `optim.b1/b9`, `model.imagez.*` | x |\n\n"
           "`--config.data.no_such=1`, `--config.KEY=VALUE`, `eval.nope=2`")
    keys = documented_keys([doc])
    assert keys == {"optim.b1", "optim.b9", "model.imagez.*", "data.no_such", "eval.nope"}
    assert missing_keys(keys, base_config) == [
        "data.no_such", "eval.nope", "model.imagez.*", "optim.b9"]


def test_every_documented_config_file_exists():
    named = {m for p in doc_files()
             for m in re.findall(r"\bconfigs/([a-z0-9_]+\.py)", p.read_text())}
    assert "demo_cpu.py" in named
    assert sorted(n for n in named if not (ROOT / "configs" / n).is_file()) == []


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    runs = [x for x in ci.splitlines() if x.startswith("python -m pytest")]
    assert len(runs) == 1, runs
    command = re.sub(r"\s+--durations=\d+", "", runs[0]).strip()  # CI's timing report only
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^" + re.escape(command) + r"(\s+#.*)?$", readme, re.M), command


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            bad.append(f"{path.name}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in {
                slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}:
            bad.append(f"{path.name}: {target}: no such heading")
    return bad


def test_links_between_the_docs_resolve(tmp_path):
    assert [b for p in doc_files() for b in broken_links(p)] == []
    page = tmp_path / "page.md"
    page.write_text("# A page\n## Many hosts: TPU pods\n[a](page.md#many-hosts-tpu-pods) "
                    "[b](#a-page) [c](gone.md) [d](page.md#nowhere) [e](https://x.org/y)\n")
    assert broken_links(page) == ["page.md: gone.md: no such file",
                                  "page.md: page.md#nowhere: no such heading"]
