"""Layering report for issue 17: cross-package imports done inside functions, and package cycles.

    .venv/bin/python benchmarks/layers.py [--src src/emseg] [--json out.json] [--list]

An "import inside a function" is an ``import``/``from ... import`` statement nested in a
function body (at any depth) whose target is another emseg package than the importing
module's own (``emseg.training`` from ``emseg/inference/...``). Top-level modules
(``emseg/_device.py``, ``emseg/config.py``) count as packages of their own name.

Cycles: strongly connected components of the package graph built from *all* imports
(module level and inside functions; an import inside a function that dodges a cycle is
still a cycle), plus the one-way pairs that close them. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import defaultdict
from pathlib import Path


def _package(module: str) -> str:
    """``emseg.inference._predictor`` -> ``inference``; ``emseg.config`` -> ``config``; ``emseg`` -> ``emseg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(src: Path, file: Path) -> str:
    rel = file.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "emseg"]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative import
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if name.split(".")[0] != "emseg":
            return []
        if name == "emseg":  # `from emseg import x`: x is a subpackage only if one of that name exists
            return [f"emseg.{a.name}" for a in node.names if a.name in _SUBMODULES]
        return [name]
    return []


_SUBMODULES: set[str] = set()


def scan(src: Path) -> tuple[list[dict], dict[str, set[str]]]:
    """(imports inside functions that cross packages, package graph of all imports)."""
    _SUBMODULES.update(p.stem if p.is_file() else p.name for p in src.iterdir() if p.suffix == ".py" or p.is_dir())
    inner: list[dict] = []
    graph: dict[str, set[str]] = defaultdict(set)
    for file in sorted(src.rglob("*.py")):
        module = _module_name(src, file)
        own = _package(module)
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        is_pkg = file.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                for target in _targets(child, module, is_pkg):
                    other = _package(target)
                    if other in ("emseg", own):
                        continue
                    graph[own].add(other)
                    if in_function:
                        inner.append({"file": str(file.relative_to(src.parent.parent)), "line": child.lineno,
                                      "from": own, "to": other, "target": target})
                visit(child, nested)

        visit(tree, False)
    return inner, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            strong(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "emseg")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--list", action="store_true", help="list every import inside a function")
    args = parser.parse_args()
    inner, graph = scan(args.src)
    sccs = cycles(graph)
    two_way = sorted({tuple(sorted((a, b))) for a, bs in graph.items() for b in bs if a in graph.get(b, set())})
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for item in inner:
        pairs[(item["from"], item["to"])] += 1
    print(f"cross-package imports inside functions: {len(inner)}")
    for (a, b), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {a:>12} -> {b:<12} {n}")
    print(f"package cycles (strongly connected components): {len(sccs)}")
    for comp in sccs:
        print("  " + " <-> ".join(comp))
    print(f"two-way package pairs: {len(two_way)}")
    for a, b in two_way:
        print(f"  {a} <-> {b}")
    if args.list:
        for item in inner:
            print(f"{item['file']}:{item['line']}: {item['from']} -> {item['target']}")
    if args.json:
        args.json.write_text(json.dumps({"inner_imports": len(inner), "by_pair": {f"{a}->{b}": n for (a, b), n in pairs.items()},
                                         "cycles": sccs, "two_way_pairs": two_way, "items": inner}, indent=1))


if __name__ == "__main__":
    main()
