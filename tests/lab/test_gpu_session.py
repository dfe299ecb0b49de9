"""lab/gpu_session.py: what goes to a lent GPU machine in calls of limited size comes back
together there, byte for byte, or is refused with a message that says what is missing."""

import hashlib
import importlib.util
import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_session", ROOT / "lab" / "gpu_session.py")
gs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gs)


@pytest.fixture
def packed(tmp_path, monkeypatch):
    rnd = random.Random(0)
    model = tmp_path / "model.gguf"
    model.write_bytes(bytes(rnd.randrange(256) for _ in range(10_000)))
    data = tmp_path / "train.jsonl.xz"
    data.write_bytes(b"x" * 1_000)
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(b"y" * 500)
    folders = gs.plan([(data, "data/gutenberg/train.jsonl.xz"), (chat, "chat.jsonl")], model, "m.gguf", 4_000)
    pack = tmp_path / ".gpu"
    gs.write(folders, pack, {"model_file": "m.gguf", "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest()})
    monkeypatch.setenv("INFINI_GPU_STAGE", str(tmp_path / "stage"))
    return model, pack, folders


def test_the_pack_fits_each_call_and_holds_the_whole_model(packed):
    model, pack, folders = packed
    assert len(folders) == 3  # 1,500 small + 2,500 of the model; 4,000; 3,500
    for k in (1, 2, 3):
        files = [p for p in (pack / str(k)).rglob("*") if p.is_file() and p.name != "manifest.json"]
        assert sum(p.stat().st_size for p in files) <= 4_000
    pieces = sorted(pack.glob("*/model/m.gguf.part*"), key=lambda p: p.name)
    assert [p.name for p in pieces] == ["m.gguf.part01", "m.gguf.part02", "m.gguf.part03"]
    assert b"".join(p.read_bytes() for p in pieces) == model.read_bytes()
    manifest = json.loads((pack / "1" / "manifest.json").read_text())
    assert manifest["pieces"] == 3 and manifest["folders"] == 3


def test_staged_calls_rebuild_the_model_there(packed):
    model, pack, _ = packed
    for k in (1, 2, 3):  # one call each: only that call's folder is there
        gs.stage(pack_dir=_only(pack, k))
    st = gs.stage_dir()
    gs.assemble(st)
    assert (st / "models" / "m.gguf").read_bytes() == model.read_bytes()
    assert (st / "data" / "gutenberg" / "train.jsonl.xz").stat().st_size == 1_000
    assert not list(pack.parent.glob("call*/*/model/*.part*"))  # moved, not copied


def test_a_missing_or_foreign_piece_is_refused(packed):
    model, pack, _ = packed
    gs.stage(pack_dir=_only(pack, 1))
    gs.stage(pack_dir=_only(pack, 3))
    with pytest.raises(SystemExit, match="2 of the model's 3 pieces are staged"):
        gs.assemble(gs.stage_dir())
    piece = gs.stage_dir() / "model" / "m.gguf.part02"  # a piece from another pack
    piece.write_bytes(b"z" * 4_000)
    with pytest.raises(SystemExit, match="SHA-256 differs"):
        gs.assemble(gs.stage_dir())
    assert not (gs.stage_dir() / "models" / "m.gguf").exists()


def _only(pack: Path, k: int) -> Path:
    """A folder that holds only call k's folder, as the machine has it during that call."""
    one = pack.parent / f"call{k}"
    one.mkdir()
    (pack / str(k)).rename(one / str(k))
    return one
