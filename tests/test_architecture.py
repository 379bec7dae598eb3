"""The package's architecture rules, checked on the source (docs/architecture.md explains each).

1. Imports point down the layers (import-linter contracts in ``pyproject.toml``), and a wrong-way
   import in a copy of the package makes the linter fail.
2. No import cycles anywhere in ``src/genailab`` (``if TYPE_CHECKING`` imports excluded).
3. No ``_private`` name crosses a module boundary: neither ``from genailab.x import _y`` nor
   ``obj._method()`` on anything but ``self`` / ``cls``.
4. genailab imports sit at the top of modules; function-local imports are for heavy or optional
   third-party packages only.
5. One home per concept: log-normalise is defined once for numpy and once for torch; ``cli/`` holds only
   the typer app; run directories are opened by one helper.
6. Files over ~600 lines and classes over ~300 lines say why in their docstring.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "genailab"
FILE_CAP, CLASS_CAP = 600, 300
# Module-level and namedtuple/dataclass protocol names that are public despite the underscore.
PUBLIC_UNDERSCORE = {"_fields", "_replace", "_asdict", "_make", "_field_defaults", "_version"}


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def _lint_imports(cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run(
        [str(exe), "--no-cache", str(cwd / "pyproject.toml")], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_import_linter_contracts_hold():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_a_wrong_way_import_fails_the_linter(tmp_path):
    """The contracts are not vacuous: ``genailab.data`` importing ``genailab.cli`` is caught."""
    shutil.copytree(SRC, tmp_path / "src" / "genailab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "src" / "genailab" / "data" / "counts.py"
    bad.write_text(bad.read_text(encoding="utf-8") + "\nimport genailab.cli.app  # noqa: E402\n", encoding="utf-8")
    res = _lint_imports(tmp_path, env_path=tmp_path / "src")
    assert res.returncode != 0
    assert "genailab.data.counts" in res.stdout


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("genailab", exclude_type_checking_imports=True, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # Tarjan's strongly connected components (iterative): any component with two modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            child = next(it, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"import cycles: {cycles}"


def _private_import_violations() -> list[str]:
    out = []
    for mod, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genailab"):
                for alias in node.names:
                    if _is_private(alias.name) and node.module != mod:
                        out.append(f"{path.relative_to(SRC)}:{node.lineno} imports {node.module}.{alias.name}")
    return out


def _private_attribute_violations() -> list[str]:
    out = []
    for _, path, tree in _modules():
        third_party = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a for a in node.names if not a.name.startswith("genailab")]
                third_party |= {(a.asname or a.name).split(".")[0] for a in names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("genailab"):
                third_party |= {a.asname or a.name for a in node.names}
        own = set()  # private names this module defines itself (methods, attributes): using them is not crossing
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)) or node.attr in own:
                continue
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Name) and base.id in third_party:
                continue  # e.g. torch._C: a third-party library's business, not ours
            out.append(f"{path.relative_to(SRC)}:{node.lineno} reaches into .{node.attr}")
    return out


def test_no_private_name_crosses_a_module_boundary():
    violations = _private_import_violations() + _private_attribute_violations()
    assert not violations, "\n".join(violations)


def test_genailab_imports_are_at_module_top():
    bad = []
    for _, path, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("genailab"):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} from {node.module} import ...")
                elif isinstance(node, ast.Import) and any(a.name.startswith("genailab") for a in node.names):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} import {node.names[0].name}")
    assert not bad, "function-local genailab imports:\n" + "\n".join(bad)


def test_log_normalise_has_one_home_per_array_library():
    homes = {}
    for mod, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and "log_normali" in node.name.lower():
                homes.setdefault(node.name, []).append(mod)
    found = sorted((name, m) for name, mods in homes.items() for m in mods)
    assert found == [("log_normalize", "genailab.data.counts"), ("log_normalize", "genailab.nn")], found


def test_cli_holds_only_the_typer_app():
    files = sorted(p.name for p in (SRC / "cli").glob("*.py"))
    assert files == ["__init__.py", "app.py"], files


def test_run_directories_have_one_home():
    """``run_config.json`` / ``run.json`` names are defined in one module, and only it writes them."""
    owners = []
    for mod, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("run_config.json", "run.json"):
                owners.append(mod)
    assert sorted(set(owners)) == ["genailab.workflows.rundir"], owners


def _has_reason(doc: str | None) -> bool:
    return bool(doc) and "long because" in doc.lower()


def test_big_files_and_classes_say_why():
    offenders = []
    for _, path, tree in _modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > FILE_CAP and not _has_reason(ast.get_docstring(tree)):
            offenders.append(f"{path.relative_to(SRC)}: {n} lines, no 'long because' in the module docstring")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > CLASS_CAP and not _has_reason(ast.get_docstring(node)):
                    offenders.append(f"{path.relative_to(SRC)}: class {node.name} has {size} lines")
    assert not offenders, "\n".join(offenders)
