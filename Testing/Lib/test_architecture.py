"""The house rules of docs/architecture.md, checked on the source itself.

* no import circle inside ``LesionDetectorLib`` (every import statement counts, also the deferred
  ones inside functions, since they run sooner or later);
* the ground floor and the exporters load no torch; the library loads no Slicer, Qt or vtk;
* the LUNA16 column names are spelled in one module;
* one table of operating-point names (the Slicer module's labels match it).
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "LesionDetectorLib"


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, level: int, target: str) -> str:
    """Absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> Dict[str, Set[str]]:
    """module -> library modules it imports (module level and inside functions alike)."""
    graph: Dict[str, Set[str]] = {}
    for module, path in MODULES.items():
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node.level, node.module or "")
                # "from pkg import name" runs pkg, and pkg.name when that is a module. A module that
                # takes only submodules from its own package ("from . import _loader") does not
                # run the package: Python initialised it before this module.
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
                own_package = module.startswith(base + ".")
                targets = subs if own_package and len(subs) == len(node.names) else [base] + subs
            else:
                continue
            for target in targets:
                while target and target not in MODULES:     # a name inside a module -> that module
                    target = target.rpartition(".")[0]
                if target and target.startswith("LesionDetectorLib") and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    # cli/evaluate imports the LUNA16 format module inside functions only.
    assert "LesionDetectorLib.luna16_format" in graph["LesionDetectorLib.cli.evaluate"]
    assert "LesionDetectorLib.evaluation.froc" in graph["LesionDetectorLib.evaluation.luna16_evaluation"]
    assert "LesionDetectorLib.atomic" in graph["LesionDetectorLib.luna16_format"]


def test_no_import_circle_in_the_library():
    found = cycles(import_graph())
    assert not found, "import circles (deferred imports included): " + "; ".join(" <-> ".join(c) for c in found)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["LesionDetectorLib.findings", "LesionDetectorLib.export",
                                    "LesionDetectorLib.luna16_format", "LesionDetectorLib.evaluation"])
def test_ground_floor_exporters_and_evaluation_load_no_torch(module):
    proc = _run(f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{module} loads torch: {proc.stdout.strip()}"


def test_every_library_module_imports_without_slicer_qt_or_vtk():
    blocked = ("slicer", "vtk", "qt", "ctk", "PySide2", "PySide6", "PyQt5", "PyQt6", "vtkmodules", "MRMLCore")
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
failed = []
for name in {sorted(m for m in MODULES if not m.endswith('__main__'))!r}:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed.append(name + ": " + str(exc))
print("FAILED", failed)
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert lines["FAILED"] == "[]" and lines["LOADED"] == "[]", proc.stdout


def _string_constants(path: Path):
    """String literals of a file that are not docstrings (where a column name would be defined)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_luna16_columns_are_defined_once():
    where = {}
    for path in list(LIB.rglob("*.py")) + list((REPO / "LesionDetector").rglob("*.py")):
        for value in _string_constants(path):
            if value in ("coordX", "coordY", "coordZ") or value.replace(" ", "").startswith("seriesuid,coordX"):
                where.setdefault(str(path.relative_to(REPO)), set()).add(value)
    assert list(where) == ["LesionDetectorLib/luna16_format.py"], (
        f"LUNA16 column names spelled outside luna16_format.py: {where}; read and write LUNA16 rows "
        "through LesionDetectorLib.luna16_format (read_annotations, as_annotations, write_csv, ...)")


def test_one_table_of_operating_point_names():
    from LesionDetectorLib.evaluation.operating_points import FP_TARGETS, SENSITIVITY_TARGETS, fp_key, sensitivity_key
    from LesionDetectorLib.inference.patient_flag import DEFAULT_OPERATING_POINT, OPERATING_POINT_NAMES, OPERATING_POINTS

    measured = [sensitivity_key(t) for t in SENSITIVITY_TARGETS] + [fp_key(t) for t in FP_TARGETS]
    assert sorted(measured) == sorted(OPERATING_POINT_NAMES) and DEFAULT_OPERATING_POINT in OPERATING_POINT_NAMES
    # The Slicer module loads before the library is installed, so it keeps a label -> name dict;
    # it must be this table read backwards.
    tree = ast.parse((REPO / "LesionDetector" / "LesionDetector.py").read_text(encoding="utf-8"))
    module_table = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "OPERATING_POINTS" for t in node.targets))
    assert module_table == {label: name for name, label in OPERATING_POINTS.items()}
