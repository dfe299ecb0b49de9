"""Reading many books on a real Ray cluster (two local workers on 127.0.0.1, started by the test) into
the real PostgreSQL server of the test session (tests/app/conftest.py), one worker killed mid-book."""

import ast
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from infini_reader import engine
from infini_reader.app.cli import main
from infini_reader.app.core.batch import WorkerSpec
from infini_reader.app.core.library import Library

from .conftest import write_book

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'; scripts/setup.sh test has it)")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mid_model_dir(builtin_tokenizer_engine, tmp_path_factory):
    """A random model with the built-in tokenizer, big enough that a book of ~100 segments takes a
    few seconds (time to kill its worker mid-book), small enough to load at once; 64-token segments."""
    cfg = engine.InfiniConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=64, intermediate_size=1024, segment_length=64, memory_update="delta")
    b = builtin_tokenizer_engine
    e = engine.Engine(engine.build_model(cfg, seed=1), b.tokenizer, "mid", b.tokenizer_json, b.chat)
    d = tmp_path_factory.mktemp("mid-model")
    e.export_hf(d)
    return d


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of this machine with two CPUs (two one-thread workers), on 127.0.0.1 only."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def books(folder: Path) -> list[Path]:
    folder.mkdir()
    return [write_book(folder / "long.txt", chapters=10, paragraphs=21),  # about 100 segments of 64 tokens
            write_book(folder / "short-a.txt", chapters=1, paragraphs=3),
            write_book(folder / "short-b.txt", chapters=2, paragraphs=2)]


def test_a_worker_killed_mid_book_leaves_a_reading_another_worker_finishes(ray_cluster, postgres_url, mid_model_dir,
                                                                         tmp_path):
    from infini_reader.app.core.cluster import read_on_ray
    from infini_reader.app.core.ingest import ingest_file
    from infini_reader.app.core.models import load_model

    paths = books(tmp_path / "books")
    spec = WorkerSpec(postgres_url, str(mid_model_dir), "cpu", threads=1, checkpoint_segments=4)
    seen, killed = [], None
    for i, ev in read_on_ray(None, spec, paths, workers=2):  # None: the cluster this process joined
        seen.append((i, ev))
        if killed is None and i == 0 and ev.phase == "reading" and ev.saved and 0 < ev.segments_done < ev.segments_total:
            pid = int(ev.worker.split()[1])  # "process PID on HOST"
            os.kill(pid, signal.SIGKILL)  # its first snapshot is stored: the worker dies mid-book
            killed = (pid, ev.segments_done)
    assert killed is not None, "the long book was never seen mid-way"
    finals = {i: ev for i, ev in seen if ev.phase in ("ready", "failed", "cancelled")}
    assert sorted(finals) == [0, 1, 2] and all(ev.phase == "ready" for ev in finals.values()), finals
    assert len([1 for i, ev in seen if ev.phase in ("ready", "failed", "cancelled")]) == 3  # each book's end once

    # the long book: handed on after its worker died, resumed (not restarted) by another process
    long_events = [ev for i, ev in seen if i == 0]
    at = next(n for n, ev in enumerate(long_events) if ev.phase == "requeued")
    resumed = next(ev for ev in long_events[at:] if ev.phase == "reading")
    assert resumed.segments_done >= killed[1] > 0
    assert int(finals[0].worker.split()[1]) != killed[0]
    assert finals[0].segments_done == finals[0].segments_total > killed[1]

    # the shared library holds the three books read whole, and nobody holds their locks any more
    lib = Library(postgres_url)
    infos = lib.infos()
    assert len(infos) == 3 and all(i.status == "ready" and i.segments_done == i.segments_total > 0 for i in infos)
    assert all(lib.readers(i.id) == [] for i in infos)
    assert all(Path(i.path) in [p.resolve() for p in paths] for i in infos)  # the caller's paths, not the copies

    # the memory made across two processes is the one an uninterrupted reading makes
    e = load_model(mid_model_dir, device="cpu")
    local = Library(f"sqlite:///{tmp_path / 'alone.sqlite3'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (last,) = [ev for ev in ingest_file(local, e, paths[0]) if ev.phase == "ready"]
    finally:
        torch.set_num_threads(threads)
    shared = engine.Memory.from_bytes(lib.memory_bytes(finals[0].document_id, e.fingerprint))
    alone = engine.Memory.from_bytes(local.memory_bytes(last.document_id, e.fingerprint))
    assert shared.tokens == alone.tokens > 0
    for a, b in zip(shared.M + shared.z, alone.M + alone.z):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ingest_ray_from_the_command_line(ray_cluster, postgres_url, mid_model_dir, tmp_path, capsys):
    """`infini --db URL ingest --ray local --workers 2 FOLDER`: every book's outcome on stderr (a bad
    file in one line), the ids on stdout, the library listed through the command line afterwards."""
    folder = tmp_path / "books"
    folder.mkdir()
    write_book(folder / "a.txt", chapters=1, paragraphs=2)
    (folder / "sub").mkdir()
    write_book(folder / "sub" / "b.md", chapters=2, paragraphs=2)
    (folder / "broken.epub").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "notes.xyz").write_text("not a book")
    common = ["--db", postgres_url, "--model", str(mid_model_dir), "--device", "cpu"]
    code = main([*common, "ingest", "--ray", "local", "--workers", "2", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1, err  # one book failed
    assert "3 books: 2 read" in err and "1 failed" in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("infini: broken.epub")]) == 1 and "Traceback" not in err
    ids = [int(x) for x in out.split()]
    assert len(ids) == 2
    code = main([*common, "list", "--json"])
    listed = {d["title"]: d for d in json.loads(capsys.readouterr().out)}
    assert {d["status"] for d in listed.values()} == {"ready", "failed"} and len(listed) == 3
    assert {d["id"] for d in listed.values() if d["status"] == "ready"} == set(ids)


def test_ray_missing_is_one_line(monkeypatch, capsys, tmp_path, mid_model_dir):
    """Without Ray installed (hidden from the import system here), `--ray` says so in one line."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    book = write_book(tmp_path / "a.txt", chapters=1, paragraphs=1)
    code = main(["--data-dir", str(tmp_path / "data"), "--model", str(mid_model_dir), "--device", "cpu",
                 "ingest", "--ray", "local", str(book)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        "infini: reading on a cluster needs Ray, which is not installed: pip install 'infini-reader[ray]' "
        "(or: pip install ray)"]


def test_only_the_cluster_module_imports_ray():
    """Ray stays optional: the engine, the window and the rest of the application never import it."""
    for path in [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("engine").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                assert path.relative_to(ROOT).as_posix() == "app/core/cluster.py", path
