"""Layers point one way: the books (`ledger/`) know nothing of file layouts, jobs or callers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ledgerflow

PACKAGE = Path(ledgerflow.__file__).parent
#: What the ledger may never import: the export (layouts, saga), the engine and everything above.
FORBIDDEN = ("export", "engine", "scheduler", "receipts", "app", "service", "api", "cli", "web", "builtin")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top, inside functions or under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"ledgerflow.{node.module}"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_nothing_under_ledger_imports_the_export_or_any_layer_above_it():
    offenders = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sorted((PACKAGE / "ledger").glob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[:2] in [["ledgerflow", layer] for layer in FORBIDDEN]
    }
    assert not offenders, sorted(offenders)


def test_the_check_sees_imports_hidden_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ledgerflow.export.profiles import check_entry\n")
    assert "ledgerflow.export.profiles" in imported_modules(sample)


def test_a_worker_process_never_loads_the_sqlalchemy_orm():
    """Core only: the ORM is 0.1 s of every worker's start-up for nothing (`Table.alias`, not `aliased`)."""
    code = (
        "import sys, ledgerflow.cli, ledgerflow.engine.worker, ledgerflow.export.saga; "
        "sys.exit('sqlalchemy.orm' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
