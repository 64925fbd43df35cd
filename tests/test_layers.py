"""The package's layers point one way: no import cycles, and the core never imports the
logging side (the rule in docs/design.md, "Modules")."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import mmaplog

PACKAGE = os.path.dirname(mmaplog.__file__)

# Modules that must never depend on the logging side or the command line.
CORE = {
    "exceptions",
    "_faults",
    "_format",
    "_codec",
    "_crypto",
    "_xlog",
    "_blocks",
    "_logfile",
    "_cache",
    "_reader",
}
LOGGING_SIDE = {"handler", "structlog", "_flusher", "_cli", "__main__", "decode", "__init__"}


def imports_of(name: str) -> set[str]:
    """The mmaplog modules ``name`` imports, at top level or inside functions."""
    with open(os.path.join(PACKAGE, f"{name}.py")) as f:
        tree = ast.parse(f.read())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "mmaplog":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "mmaplog" and len(parts) > 1:
                    found.add(parts[1])
    modules = set(graph_nodes())
    return {m for m in found if m in modules and m != name}


def graph_nodes() -> list[str]:
    """Every module of the package, by name."""
    return sorted(n[:-3] for n in os.listdir(PACKAGE) if n.endswith(".py"))


def test_there_is_no_import_cycle_inside_the_package():
    """No module reaches itself through imports, counting imports inside functions."""
    graph = {m: imports_of(m) for m in graph_nodes() if m != "__init__"}
    graph = {m: deps - {"__init__"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_never_imports_the_logging_side():
    """The format, blocks, cache and reader modules import neither the handler nor the CLI."""
    bad = {m: sorted(imports_of(m) & LOGGING_SIDE) for m in sorted(CORE)}
    assert {m: v for m, v in bad.items() if v} == {}


def test_fault_points_import_nothing_of_mmaplog():
    """The fault-injection module stands alone, so any layer may call it."""
    assert imports_of("_faults") == set()


def test_importing_mmaplog_loads_no_harness_and_no_optional_package():
    """``import mmaplog`` loads neither the crash harness nor structlog nor boto3."""
    code = (
        "import sys, mmaplog\n"
        "bad = [m for m in sys.modules\n"
        "       if m.startswith(('torture', 'structlog', 'boto3', 'botocore', 'mmaplog._cli'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_comes_from_the_package_metadata():
    """``mmaplog.__version__`` is the installed distribution's version, not a second copy."""
    from importlib import metadata

    assert mmaplog.__version__ == metadata.version("mmaplog")
