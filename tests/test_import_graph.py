"""scripts/import_graph.py: the package has no import cycle, and the script would see one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import import_graph  # scripts/ is on pytest's pythonpath

REPO = Path(__file__).resolve().parent.parent


def test_the_package_has_no_module_level_import_cycle() -> None:
    found, _ = import_graph.report(REPO / "gateway")
    assert found == []


MAX_MODULE_LINES = 400  # CONTRIBUTING: a module past this is two concepts; split it


def test_no_module_of_the_package_is_over_400_lines() -> None:
    sizes = {str(path.relative_to(REPO)): len(path.read_text().splitlines())
             for path in (REPO / "gateway").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_script_exits_zero_and_prints_the_counts() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_graph.py")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cycles: 0" in run.stdout


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_module_level_cycle_is_found_and_fails_the_script(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import x\n",
        "b.py": "from . import c\n",
        "c.py": "try:\n    from .a import y\nexcept ImportError:\n    pass\n",
    })
    found, _ = import_graph.report(pkg)
    assert found == [["pkg.a", "pkg.b", "pkg.c"]]
    assert import_graph.main(["--package", str(pkg), "--quiet"]) == 1


def test_type_checking_and_function_imports_are_back_edges_not_cycles(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "app.py": "from .view import render\n",
        "view.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .app import App\n"
            "def render() -> None:\n    from . import app\n"
        ),
    })
    found, back = import_graph.report(pkg)
    assert found == []
    assert [(e.source, e.line, e.target) for e in back] == [
        ("pkg.view", 3, "pkg.app"), ("pkg.view", 5, "pkg.app"),
    ]


def test_importing_a_subpackage_module_runs_its_package_init(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "engine.py": "from .jobs.store import Store\n",
        "jobs/__init__.py": "from .api import register\n",
        "jobs/api.py": "from ..engine import run\n",
        "jobs/store.py": "",
    })
    found, _ = import_graph.report(pkg)
    assert found == [["pkg.engine", "pkg.jobs", "pkg.jobs.api"]]
