"""docs/BAD_INPUTS.md: every row names tests, and each named test exists in the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_row_of_the_bad_input_table_is_a_test():
    rows = [line for line in (ROOT / "docs" / "BAD_INPUTS.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| case") and not line.startswith("|---")]
    assert len(rows) >= 50
    missing = []
    for row in rows:
        names = re.findall(r"(tests/[\w/]+\.py)::(\w+)", row)
        assert names, f"row without a test: {row[:120]}"
        for file, test in names:
            if not (ROOT / file).is_file() or test not in _defined_tests(ROOT / file):
                missing.append(f"{file}::{test}")
    assert not missing, missing
