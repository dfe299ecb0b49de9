"""DESIGN.md section 1: imports flow ui/cli → app services → engine → kernels, never back."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def test_engine_and_kernels_never_import_the_app_or_qt():
    for pkg in ("engine", "kernels"):
        files = package_files(pkg)
        assert files, pkg
        for f in files:
            bad = imported_modules(f) & {"app", "PySide6", "sqlalchemy"}
            assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_kernels_never_import_the_engine():
    for f in package_files("kernels"):
        assert "engine" not in imported_modules(f), f


def test_only_app_ui_imports_pyside6():
    for f in [*package_files("app"), *package_files("engine"), *package_files("kernels")]:
        if (ROOT / "app" / "ui") in f.parents:
            continue
        assert "PySide6" not in imported_modules(f), f"{f.relative_to(ROOT)} imports PySide6"


def test_no_pickle_loading_anywhere():
    for pkg in ("engine", "kernels", "app"):
        for f in package_files(pkg):
            text = f.read_text()
            assert "pickle" not in imported_modules(f), f
            assert "torch.load(" not in text, f
