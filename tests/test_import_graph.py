"""The rules of the house about imports (DESIGN.md), checked on the source text.

  * No cycle among our modules (synthclip_jax, tools, data_gen, configs), counting imports at
    any level, including those inside functions.
  * `synthclip_jax` never imports `tools` or `data_gen` (at any level), and never imports torch
    at module level. torch may be imported inside a function only under `synthclip_jax.export`
    (an export to a PyTorch library runs it; training never does).
  * Loading every config file (and calling its get_config()) does not import jax.
  * Layers inside `synthclip_jax` (LAYER_RULES): `run/` (files, lock, metrics, provenance) is the
    bottom and imports nothing of ours outside itself; the config's leaves (`error`, `choices`,
    `axis_rules`, ...) import nothing of ours, so models, data and training can use them; the
    checks at the door (`config.check*`, which import every package's names) and `main` are
    the top: only entry points import the checks, nothing imports `main`.

Edges go to the module an import statement names (`from a.b import c` -> a.b.c when that is a
module of ours, else a.b); the implicit import of parent packages is not an edge.
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("synthclip_jax", "tools", "data_gen", "configs")
FORBIDDEN_IN_LIBRARY = ("tools", "data_gen")  # at any level
TORCH = "torch"
TORCH_INSIDE_FUNCTIONS_ALLOWED = "synthclip_jax.export."  # its modules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p
            for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, name: str):
    """Yields (imported dotted name, from-name or None, at module level?) for every import."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            inside = top_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, None, top_level
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - (child.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                for alias in child.names:
                    yield base, alias.name, top_level
            yield from visit(child, inside)

    yield from visit(tree, True)


def resolve(target: str, from_name: str | None, modules) -> str | None:
    """The module of ours an import names, or None for an outside one."""
    if from_name and f"{target}.{from_name}" in modules:
        return f"{target}.{from_name}"
    parts = target.split(".")
    while parts:  # `import a.b.c` where only a.b is ours (c an attribute): a.b
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(modules) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for target, from_name, _ in imports(path, name)
                       if (m := resolve(target, from_name, modules)) not in (None, name)}
    return graph


def find_cycle(graph) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state = {}  # absent: unseen, 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_detects_cycles_and_their_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_resolution_of_from_imports_and_relative_imports(tmp_path):
    modules = {"p", "p.a", "p.b"}
    assert resolve("p", "a", modules) == "p.a"  # from p import a: the module
    assert resolve("p.a", "f", modules) == "p.a"  # from p.a import f: a name in it
    assert resolve("numpy", None, modules) is None
    src = tmp_path / "b.py"
    src.write_text("from . import a\nfrom .a import f\ndef g():\n    import torch\n")
    assert list(imports(src, "p.b")) == [("p", "a", True), ("p.a", "f", True),
                                         ("torch", None, False)]


def test_no_import_cycle():
    modules = our_modules()
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)  # the walk found the files
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_imports_neither_tools_data_gen_nor_torch():
    bad = []
    for name, path in our_modules().items():
        if not name.startswith("synthclip_jax"):
            continue
        for target, _, top_level in imports(path, name):
            root = target.split(".")[0]
            if root in FORBIDDEN_IN_LIBRARY:
                bad.append(f"{name} imports {target}")
            elif root == TORCH and (top_level
                                    or not name.startswith(TORCH_INSIDE_FUNCTIONS_ALLOWED)):
                bad.append(f"{name} imports {target}" + (" at module level" if top_level else ""))
    assert not bad, bad


# module (prefix) -> the modules of ours it may import: prefixes, and the package root itself
# (synthclip_jax/__init__.py: the version), which allows none of the root's sub-modules
RUN = "synthclip_jax.run"
CONFIG_LEAVES = tuple(f"synthclip_jax.config.{m}" for m in (
    "error", "choices", "axis_rules", "exit", "cli_paths"))
LAYER_RULES = {RUN: ("synthclip_jax", RUN), **{leaf: () for leaf in CONFIG_LEAVES}}
# module (prefix) -> who may import it besides itself: entry points, tools and tests
TOP = {"synthclip_jax.config.check": ("synthclip_jax.config.check", "synthclip_jax.main",
                                      "synthclip_jax.evaluate.__main__", "tools."),
       "synthclip_jax.main": ("tools.",)}


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".") \
        or (prefix.endswith("check") and name.startswith(prefix))  # check, check_data, ...


def layer_violations(graph) -> list[str]:
    bad = []
    for name, targets in graph.items():
        for rule, allowed in LAYER_RULES.items():
            if matches(name, rule):
                bad += [f"{name} imports {t} (allowed: {allowed or 'nothing of ours'})"
                        for t in targets if not any(
                            t == a or (a != "synthclip_jax" and matches(t, a)) for a in allowed)]
        for top, importers in TOP.items():
            bad += [f"{name} imports {t} (only {', '.join(importers)} may)"
                    for t in targets if matches(t, top) and not any(
                        matches(name, i) for i in importers)]
    return bad


def test_layer_rules_hold_and_can_fail():
    assert layer_violations(import_graph(our_modules())) == []
    fake = {"synthclip_jax.run.files": {"synthclip_jax.train.loop"},
            "synthclip_jax.config.error": {"synthclip_jax.run.files"},
            "synthclip_jax.train.loop": {"synthclip_jax.config.check_data"},
            "synthclip_jax.config.check": {"synthclip_jax.main"},
            "synthclip_jax.run.metrics": {"synthclip_jax.run.files", "synthclip_jax"}}
    assert len(layer_violations(fake)) == 4


def test_config_files_load_without_jax():
    configs = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
    assert configs
    code = ("import importlib, sys\n"
            f"for name in {configs!r}:\n"
            "    importlib.import_module('configs.' + name).get_config()\n"
            "loaded = sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.'))\n"
            "print('jax modules:', loaded)\n"
            "sys.exit(1 if loaded else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr



def test_old_config_base_path_still_loads_an_old_config_with_a_warning(tmp_path):
    old_config = tmp_path / "old_config.py"
    old_config.write_text("from synthclip_jax.config_base import base\n\n"
                          "def get_config():\n    c = base()\n    c.total_steps = 7\n    return c\n")
    code = ("import warnings, runpy; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    runpy.run_path(%r)\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
            "warnings.simplefilter('ignore')\n"
            "import importlib; from synthclip_jax.config import base\n"
            "print(runpy.run_path(%r)['get_config']().total_steps, "
            "importlib.import_module('synthclip_jax.config_base').base is base.base)"
            % (str(old_config), str(old_config)))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "warned: synthclip_jax.config_base moved to synthclip_jax.config.base" in out.stdout
    assert out.stdout.splitlines()[-1] == "7 True"
