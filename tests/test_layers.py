"""The package layers point one way: computed from the source, so it stays that way.

Rank of each subpackage / top-level module of ``medinfer`` (DESIGN.md, docs/ARCHITECTURE.md):
a module may import only from lower ranks or its own package. No import of another
package's private (``_``) names. Function-local imports of medinfer modules only where a
command keeps a heavy dependency (torch, OpenVINO, highdicom...) off the path of others.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medinfer"

RANK = {
    "errors": 0, "variants": 0, "progress": 0,
    "io": 1, "models": 1, "metrics": 1,
    "data": 2, "perfusion": 2, "profiling": 2,
    "artifact": 3,
    "runtime": 4,
    "partition": 5,
    "tasks": 6,
    "train": 7, "optimize": 7, "report": 7, "serve": 7,
    "apps": 8,
    "cli": 9, "__init__": 9,
}

# Function-local imports of medinfer modules that are there on purpose: the module is the
# entry point of a command (imports on first use keep `medinfer --help` and the service's
# API process light), or the import pulls a heavy optional library into a light module.
LAZY_OK = {
    "cli.py": "command shell: each command imports its stage when run",
    "serve/cli.py": "command shell of `medinfer serve`",
    "serve/service.py": "the API process imports the DICOM listener, workers and API only when started",
    "serve/worker.py": "the API process must not import torch: tasks load in the worker only",
    "serve/api.py": "the web page's templates load on first request",
    "serve/ingest.py": "pydicom-based readers load on the first DICOM upload",
    "serve/delivery.py": "ORM models load with the delivery loop",
    "artifact.py": "artifact.json is read without importing torch (light runtimes)",
    "report/build.py": "captum (explanations) only for classification reports",
    "train/detect.py": "stage 2 trains through the loop, which imports the recipes",
    "train/cytology.py": "stage 2 trains through the loop, which imports the recipes",
    "partition/receptive.py": "tiling helpers load only when a tile plan is made",
}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    """(target package, imported names, function-local?) for every medinfer import in ``path``."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medinfer":
            parts = node.module.split(".")
            yield (parts[1] if len(parts) > 1 else "__init__"), [a.name for a in node.names], id(node) in local
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "medinfer" and len(parts) > 1:
                    yield parts[1], [], id(node) in local


FILES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_rank() -> None:
    assert {_package(f) for f in FILES} <= set(RANK)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for f in FILES:
        for target, _, _ in _imports(f):
            if target != _package(f):
                graph[_package(f)].add(target)

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            visit(nxt, path + [nxt])

    for start in list(graph):
        visit(start, [start])


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{f.relative_to(SRC)} imports medinfer.{t}" for f in FILES for t, _, _ in _imports(f)
             if t != _package(f) and RANK[t] >= RANK[_package(f)]]
    assert not wrong, "\n".join(wrong)


def test_no_private_names_across_packages() -> None:
    wrong = [f"{f.relative_to(SRC)} imports {n} from medinfer.{t}" for f in FILES
             for t, names, _ in _imports(f) if t != _package(f) for n in names if n.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_function_local_imports_only_where_documented() -> None:
    wrong = sorted({str(f.relative_to(SRC)) for f in FILES for _, _, lazy in _imports(f)
                    if lazy and str(f.relative_to(SRC)) not in LAZY_OK})
    assert not wrong, "function-local medinfer imports in: " + ", ".join(wrong)


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """A module importing upwards is caught by the same code (the checks are not vacuous)."""
    bad = SRC / "io" / "_layers_probe.py"
    try:
        bad.write_text("from medinfer.tasks import task_for\n\ndef f():\n    from medinfer.data import spec\n")
        found = list(_imports(bad))
        assert ("tasks", ["task_for"], False) in found and ("data", ["spec"], True) in found
        assert RANK["tasks"] > RANK[_package(bad)]
    finally:
        bad.unlink()
