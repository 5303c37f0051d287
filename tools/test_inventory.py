"""Counts the suite's checks: test functions and assertions (assert statements and
pytest.raises) under tests/, so a change that makes CI faster can show it dropped none.

    python -m tools.test_inventory [TESTS_DIR]
"""
import argparse
import ast
import pathlib


def inventory(root: pathlib.Path) -> dict:
    functions = asserts = 0
    for path in sorted(root.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                functions += 1
            elif isinstance(node, ast.Assert):
                asserts += 1
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "raises":
                asserts += 1
    return {"test_functions": functions, "assertions": asserts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tools.test_inventory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("tests_dir", nargs="?", default="tests", metavar="TESTS_DIR")
    counts = inventory(pathlib.Path(parser.parse_args().tests_dir))
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
