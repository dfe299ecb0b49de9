"""The built wheel, installed beside Hugging Face's `kernels` package (which transformers 5 brings):
the product's own import root (infini_reader.*) keeps the two apart, and `infini` reads and answers
from another directory, with the shipped adapter found inside the installed package."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Our wheel (no dependencies: they are this environment's) installed into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("infini_reader-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, cwd=tmp)
    return tmp / "site"


def run(site: Path, cwd: Path, *args: str, **env) -> subprocess.CompletedProcess:
    """`infini ARGS` from the installed wheel, in `cwd`; the editable checkout is kept out of the way."""
    code = "import sys; from infini_reader.app.cli import main; sys.exit(main(sys.argv[1:]))"
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_holds_one_import_root_and_the_shipped_adapter(installed):
    assert sorted(p.name for p in installed.iterdir() if not p.name.endswith((".dist-info", ".data"))) in (
        ["infini_reader"], ["bin", "infini_reader"])
    root = installed / "infini_reader"
    assert {p.name for p in root.iterdir()} >= {"engine", "kernels", "app", "resources"}
    assert (root / "resources" / "smollm2-135m-infini-adapter.safetensors").stat().st_size > 1_000_000
    assert (root / "app" / "core" / "migrations" / "versions").is_dir()
    assert (root / "docs" / "user-guide.md").is_file()  # Help → User guide
    assert not (root / "lab").exists() and not (installed / "lab").exists()


@pytest.mark.builtin
def test_ingest_and_ask_beside_hugging_faces_kernels_package(installed, tmp_path):
    if importlib.util.find_spec("kernels") is None:
        pytest.skip("Hugging Face's `kernels` is not installed here (transformers 5 brings it)")
    probe = run(installed, tmp_path, "--help")
    assert probe.returncode == 0, probe.stderr
    where = subprocess.run([sys.executable, "-c", "import kernels, infini_reader.app.core.paths as p; "
                            "print(kernels.__file__); print(p.__file__); print(p.resource('MODEL_CARD.md'))"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True,
                           text=True, check=True).stdout.split()
    assert "site-packages" in where[0] and str(installed) not in where[0]  # theirs
    assert where[1].startswith(str(installed)) and where[2].startswith(str(installed))  # ours, from the wheel

    book = tmp_path / "lighthouse.txt"
    book.write_text("The Lighthouse\n\nCHAPTER I\n\nThe keeper of the lighthouse was called Tobias Marsh. "
                    "Every night he climbed the ninety steps to light the lamp.\n" * 3)
    data = tmp_path / "data"
    got = run(installed, tmp_path, "--data-dir", str(data), "ingest", "--quiet", str(book))
    assert got.returncode == 0, got.stderr
    assert "kernels" not in got.stderr and "Traceback" not in got.stderr
    got = run(installed, tmp_path, "--data-dir", str(data), "ask", "lighthouse", "Who kept the lighthouse?", "--json")
    assert got.returncode == 0, got.stderr
    assert "Tobias" in got.stdout or "Marsh" in got.stdout, got.stdout
