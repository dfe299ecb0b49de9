"""DESIGN.md section 1: imports flow ui/cli → app services → engine → kernels, never back."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _top(name: str) -> str:
    """The package an import names: `infini_reader.engine.model` → engine, `torch.nn` → torch."""
    parts = name.split(".")
    return parts[1] if parts[0] == "infini_reader" and len(parts) > 1 else parts[0]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(_top(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "infini_reader":  # from infini_reader import engine
                names.update(a.name for a in node.names)
            else:
                names.add(_top(node.module))
    return names


def test_every_import_of_the_product_goes_through_its_unique_root():
    """`engine`, `kernels` and `app` are other PyPI packages' names too (Hugging Face's `kernels`
    comes with transformers 5): the product is imported as infini_reader.*, everywhere."""
    for f in sorted(ROOT.rglob("*.py")):
        if any(part in (".venv", "runs", "build", "dist") for part in f.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in ("engine", "kernels", "app"), f"{f.relative_to(ROOT)}: import {name}"


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


PRODUCT = ("engine", "kernels", "app")


def test_the_product_never_imports_the_lab():
    for pkg in PRODUCT:
        for f in package_files(pkg):
            assert "lab" not in imported_modules(f), f"{f.relative_to(ROOT)} imports the lab"
            assert "import_module(" not in f.read_text(), f"{f.relative_to(ROOT)} imports by name"


def test_engine_and_kernels_know_no_application_folders():
    """The engine takes paths from its caller: it never names the app's folders or platformdirs."""
    for pkg in ("engine", "kernels"):
        for f in package_files(pkg):
            text = f.read_text()
            assert "platformdirs" not in imported_modules(f), f
            for word in ('"resources"', "share/infini-reader", '"infini-reader"'):
                assert word not in text, f"{f.relative_to(ROOT)} names {word}"


def test_the_model_file_holds_the_model_and_not_training():
    text = (ROOT / "engine" / "model.py").read_text()
    for word in ("forward_train", "head_loss", "checkpoint("):
        assert word not in text, word


def test_run_outputs_are_not_tracked():
    """Adapters of experiments, logs, plots and result JSONs live under the ignored lab/runs/."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:  # not a git checkout (an unpacked source archive)
        return
    files = tracked.stdout.split()
    weights = [f for f in files if f.endswith((".safetensors", ".gguf", ".pt", ".bin"))]
    assert weights == ["resources/smollm2-135m-infini-adapter.safetensors"], weights
    assert not [f for f in files if f.startswith("lab/runs/")]
    assert not [f for f in files if f.startswith("lab/") and f.endswith((".png", ".csv", ".log"))]
    ignored = subprocess.run(["git", "check-ignore", "-q", "lab/runs/x/adapter.safetensors"], cwd=ROOT)
    assert ignored.returncode == 0, "lab/runs/ must be ignored"


def test_the_reference_maths_exists_once():
    """σ, rotary, the memory read and write and the plain causal attention live in kernels/reference.py;
    the engine's PyTorch path and the kernels' naive references use them from there. (The Triton kernels
    have σ in Triton's language, kernels/utils.py.)"""
    from infini_reader import engine
    import infini_reader.engine.memory  # noqa: F401
    from infini_reader import engine
    import infini_reader.engine.model  # noqa: F401
    import infini_reader.kernels.reference as ref
    from infini_reader.kernels.infini_attention import naive

    assert engine.memory.sigma is ref.sigma and engine.memory.memory_delta is ref.memory_delta
    assert engine.memory.memory_retrieve is ref.memory_retrieve and naive.memory_retrieve is ref.memory_retrieve
    assert engine.model.apply_rotary is ref.apply_rotary and engine.model.rotary_tables is ref.rotary_tables
    for name in ("sigma", "apply_rotary", "rotary_tables", "memory_retrieve", "memory_delta", "causal_attention"):
        defined = [f.relative_to(ROOT) for pkg in PRODUCT for f in package_files(pkg)
                   if f"\ndef {name}(" in f.read_text().replace(f"@triton.jit\ndef {name}(", "")]  # Triton's own σ
        assert defined == [Path("kernels/reference.py")], (name, defined)
