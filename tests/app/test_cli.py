"""The `infini` command line end to end, in a temporary data folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infini_reader.app.cli import main

from .conftest import FIXTURES, write_book

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_reader, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_reader.export_hf(d)
    return d


def run(capsys, data, model, *argv):
    code = main(["--data-dir", str(data), "--model", str(model), "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_list_info_export_rm(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=3)
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", str(book))
    assert code == 0, err
    doc_id = int(out.strip())
    assert "seg" in err  # the progress bar went to stderr

    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    (entry,) = json.loads(out)
    assert entry["id"] == doc_id and entry["status"] == "ready" and len(entry["chapters"]) == 3
    assert entry["schema"] == 1 and set(entry) >= {"title", "author", "format", "pages", "tokens", "chapters"}

    code, out, _ = run(capsys, data, tiny_model_dir, "info", entry["title"][:5].upper(), "--json")  # a title prefix
    info = json.loads(out)
    assert info["title"] == entry["title"]
    assert info["segments_done"] == info["segments_total"] > 0 and info["memory_bytes"] > 0
    assert len(info["model_fingerprint"]) == 64

    code, out, _ = run(capsys, data, tiny_model_dir, "info", str(doc_id))
    assert "Chapters" in out
    assert f"{info['segments_total']} of {info['segments_total']} read" in out

    code, out, _ = run(capsys, data, tiny_model_dir, "export", str(doc_id))
    assert out.startswith("# ") and "## Chapters" in out

    # the same book again: already there, instantly
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", str(book))
    assert code == 0 and int(out) == doc_id and "already in the library" in err

    code, _, err = run(capsys, data, tiny_model_dir, "rm", str(doc_id))
    assert code == 0 and "removed" in err
    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    assert json.loads(out) == []


def test_ingest_with_summaries_stores_every_chapters_summary(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", str(book), "--summaries", "--quiet")
    assert code == 0, err
    doc_id = int(out.strip())
    assert "summaries stored" in err
    for chapter in ("1", "2", None):
        argv = ["summarize", str(doc_id), "--json"] + (["--chapter", chapter] if chapter else [])
        code, out, err = run(capsys, data, tiny_model_dir, *argv)
        assert code == 0 and "chapter" not in err.lower()  # stored: no chapter was read again
        assert isinstance(json.loads(out)["summary"], str)
    from infini_reader.app.cli import build_parser

    assert build_parser().parse_args(["summarize", "1", "--style", "abstractive"]).style == "abstractive"
    assert build_parser().parse_args(["summarize", "1"]).style is None  # the library's default


def test_user_errors_are_one_line_without_traceback(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    code, _, err = run(capsys, data, tiny_model_dir, "info", "nothing-like-this")
    assert code == 1 and err.startswith("infini: ") and "Traceback" not in err and err.count("\n") == 1
    bad = tmp_path / "broken.epub"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    good = write_book(tmp_path / "good.txt")
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", str(bad), str(good))
    assert code == 1 and "broken.epub" in err and "Traceback" not in err
    assert len(out.split()) == 1  # the good one went in
    code, out, _ = run(capsys, data, tiny_model_dir, "list")
    assert "failed" in out and "ready" in out
    code, _, err = run(capsys, data, tmp_path / "no-model-here", "ingest", str(good))
    assert code == 1 and "no such file or folder" in err


def test_a_book_read_with_an_adapter_is_asked_with_it(capsys, tmp_path, tiny_model_dir):
    from infini_reader.engine import load_model
    from tests.conftest import write_nudged_adapter

    adapter = tmp_path / "nudged.safetensors"
    write_nudged_adapter(load_model(tiny_model_dir, device="cpu", adapter=None).model, adapter)
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    code, out, err = run(capsys, data, tiny_model_dir, "--adapter", str(adapter), "ingest", "--quiet", str(book))
    assert code == 0, err
    doc = out.strip()
    code, out, err = run(capsys, data, tiny_model_dir, "--adapter", str(adapter), "ask", doc, "Who keeps the light?")
    assert code == 0 and out.strip(), err
    # without it the weights differ from those that wrote the memory: a clear message, the book kept
    code, _, err = run(capsys, data, tiny_model_dir, "ask", doc, "Who keeps the light?")
    assert code == 1 and err.startswith("infini: ") and "Traceback" not in err
    # that model was loaded just now: `list` (which loads none) knows its fingerprint, and says so
    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    assert json.loads(out)[0]["status"] == "other-model"
    code, out, _ = run(capsys, data, tiny_model_dir, "list")
    assert "read by another model" in out.splitlines()[1]
    code, out, _ = run(capsys, data, tiny_model_dir, "--adapter", str(adapter), "list", "--json")
    assert json.loads(out)[0]["status"] == "ready"
    # a choice never loaded here (`none` names no adapter too, but is another choice): unknown, so the
    # book's latest reading, as before
    code, out, _ = run(capsys, data, tiny_model_dir, "--adapter", "none", "list", "--json")
    assert json.loads(out)[0]["status"] == "ready"
    # the model's files changed since it was loaded: its record no longer counts
    config = tiny_model_dir / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1))
    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    assert json.loads(out)[0]["status"] == "ready"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not an adapter")
    code, _, err = run(capsys, data, tiny_model_dir, "--adapter", str(bad), "list")
    assert code == 0  # listing needs no model
    code, _, err = run(capsys, data, tiny_model_dir, "--adapter", str(bad), "ask", doc, "Who?")
    assert code == 1 and "not a readable adapter" in err and err.count("\n") == 1


def test_the_installed_command_runs_on_the_builtin_model(tmp_path):
    """`infini ingest` of the real EPUB fixture with the built-in model, as a user would run it."""
    exe = Path(sys.executable).with_name("infini")
    data = tmp_path / "data"
    book = FIXTURES / "dart-wasteland.epub"
    proc = subprocess.run([str(exe), "--data-dir", str(data), "ingest", str(book)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    info = subprocess.run([str(exe), "--data-dir", str(data), "info", proc.stdout.strip(), "--json"],
                          capture_output=True, text=True, timeout=120)
    d = json.loads(info.stdout)
    assert d["status"] == "ready" and d["segments_done"] == d["segments_total"] > 0
    assert "Waste Land" in d["title"]


# Runs the command line in a fresh interpreter, then says which heavy modules it imported.
_IMPORTS_PROBE = """
import json, sys
from infini_reader.app.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "triton", "gguf", "tokenizers",
                  "infini_reader.engine") if m in sys.modules)}))
"""


def test_help_list_and_info_start_without_torch(capsys, tmp_path, tiny_model_dir):
    """`infini --help`, `list` and `info` never import torch (nor the engine): they start in a fraction
    of `import torch`'s time (docs/performance.md, Start-up)."""
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", str(book))
    assert code == 0, err
    doc = out.strip()
    common = ["--data-dir", str(data), "--model", str(tiny_model_dir), "--device", "cpu"]
    for argv in (["--help"], ["list"], ["list", "--json"], ["info", doc], ["info", doc, "--json"],
                 ["info", "no-such-book"]):
        proc = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, *common, *argv], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["heavy"] == [], (argv, report)
        assert report["code"] == (1 if argv == ["info", "no-such-book"] else 0), (argv, proc.stderr)
    # the probe can fail: a command that loads the model imports torch, and the probe says so
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, *common, "ask", doc, "Who keeps the light?"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "torch" in json.loads(proc.stdout.strip().splitlines()[-1])["heavy"]


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"infini {version('infini-reader')}"


def test_device_names_a_gpu_by_number(capsys, tmp_path, tiny_model_dir):
    """--device cuda:N: parsed by the command line, judged by the engine: on a machine without that GPU
    one plain line; a device that is no device is refused by the parser, naming the forms it takes."""
    import torch

    from infini_reader.engine import ModelLoadError
    from infini_reader.engine.engine import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(ModelLoadError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    book = write_book(tmp_path / "book.txt", chapters=1)
    if torch.cuda.device_count() < 2:
        code = main(["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--device", "cuda:1",
                     "ingest", str(book)])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("infini: ") and "cuda:1" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--device", "gpu1", "list"])
    assert exit_.value.code == 2
    assert "'gpu1': use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_ingest_a_folder_one_book_at_a_time(capsys, tmp_path, tiny_model_dir):
    """A folder read in this process (--workers 1): its books found recursively, a bad file said in one
    line while the others are read, a summary at the end."""
    folder = tmp_path / "books"
    (folder / "part two").mkdir(parents=True)
    write_book(folder / "a.txt", chapters=1)
    write_book(folder / "part two" / "b.txt", chapters=2)
    (folder / "broken.epub").write_bytes(b"PK\x03\x04 damaged")
    (folder / "cover.png").write_bytes(b"\x89PNG not a book")
    code, out, err = run(capsys, tmp_path / "data", tiny_model_dir, "ingest", "--workers", "1", "--quiet", str(folder))
    assert code == 1
    assert len(out.split()) == 2  # the two books' ids
    lines = err.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("infini: broken.epub")]) == 1 and "Traceback" not in err
    assert lines[-1].startswith("3 books: 2 read (") and lines[-1].endswith("tokens), 1 failed")
