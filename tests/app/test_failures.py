"""Unlucky and hostile conditions (issue 35): every failure one plain line and a non-zero exit, nothing
half-written, nothing from a file reaching the terminal raw, no network at run time.

Most run the real `infini` in separate processes on a real SQLite file, with the tiny model."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from infini_reader.app import cli
from infini_reader.app.cli import main
from infini_reader.app.core.errors import clean_line, clean_text, database_message

from tests.conftest import fill

from .conftest import write_book

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "\x1b[2J\x1b[31mFAKE: all good\x1b]0;pwned\x07\u202eevil"

# Runs the command line in a fresh interpreter; the environment asks for slowness (to kill it in the
# middle of its work) or forbids the network.
_RUNNER = r"""
import os, socket, sys, time
if os.environ.get("T_SLOW_SEGMENT"):
    from infini_reader import engine as eng
    _ingest = eng.Engine.ingest
    def slow(self, *a, **k):
        time.sleep(float(os.environ["T_SLOW_SEGMENT"]))
        return _ingest(self, *a, **k)
    eng.Engine.ingest = slow
if os.environ.get("T_SLOW_WRITE"):
    _write = sys.stdout.write
    def write(s):
        n = _write(s); sys.stdout.flush(); time.sleep(float(os.environ["T_SLOW_WRITE"])); return n
    sys.stdout.write = write
if os.environ.get("T_NO_NETWORK"):
    def refuse(what, *args):
        with open(os.environ["T_NO_NETWORK"], "a") as f:
            f.write(f"{what} {args!r}\n")
        raise OSError("network use during a test that forbids it")
    class NoNet(socket.socket):
        def __init__(self, family=-1, *a, **k):
            if family not in (-1, socket.AF_UNIX):
                refuse("socket", family)
            super().__init__(family, *a, **k)
    socket.socket = NoNet
    def hook(event, args):
        if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.connect") and not (
                event == "socket.connect" and isinstance(args[1], (str, bytes))):
            refuse(event, args)
    sys.addaudithook(hook)
from infini_reader.app.cli import main
code = main(sys.argv[1:])
time.sleep(float(os.environ.get("T_LINGER", "0")))  # background threads' late network calls
sys.exit(code)
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_reader, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_reader.export_hf(d)
    return d


@pytest.fixture(autouse=True)
def log_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("INFINI_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def run(capsys, data, model, *argv):
    code = main(["--data-dir", str(data), "--model", str(model), "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def spawn(data, model, *argv, env=None, **kw):
    return subprocess.Popen([sys.executable, "-c", _RUNNER, "--data-dir", str(data), "--model", str(model),
                             "--device", "cpu", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT, **kw)


def one_plain_line(err: str) -> bool:
    """One error line (after any progress lines), no traceback, nothing raw from a file."""
    return (sum(line.startswith("infini: ") for line in err.splitlines()) == 1 and err.endswith("\n")
            and "Traceback" not in err and not any(c in err for c in "\x1b\x07\u202e"))


def reading_started(data: Path) -> bool:
    try:
        with sqlite3.connect(data / "library.sqlite3") as db:
            return db.execute("SELECT count(*) FROM memory_snapshots WHERE status = 'reading'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def integrity_ok(data: Path) -> bool:
    with sqlite3.connect(data / "library.sqlite3") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---- strings from files ----


def test_clean_line_and_text():
    assert clean_line(HOSTILE + ".xhtml") == "FAKE: all good evil.xhtml"
    assert clean_line("a\u202ab\u2066c\u200ed\u200ff\x85g\x9b2Jh\x00i\n\tj") == "abcdfg hi j"
    assert clean_line(None) is None
    text = "one\x1b[2J two\u202e\nthree\tfour\r"
    assert len(clean_text(text)) == len(text) and "\n" in clean_text(text) and "\t" in clean_text(text)
    assert not any(c in clean_text(text) for c in "\x1b\u202e\r")
    assert clean_text("plain\ntext") == "plain\ntext"


def test_names_from_files_are_stored_and_shown_plain(capsys, tmp_path, tiny_model_dir):
    from tests.app.test_readers_epub import make_epub

    data = tmp_path / "data"
    book = write_book(tmp_path / f"{HOSTILE}.txt", chapters=2)
    empty = tmp_path / f"{HOSTILE}-empty.md"
    empty.write_bytes(b"")
    words = "Plenty of ordinary words fill this chapter so that it counts as one. " * 3
    xml_safe = "\u202eevil\u2066\x9b2J"  # XML holds no ESC; member names in the ZIP can
    epub = make_epub(tmp_path / "hostile.epub", [(f"Chapter {xml_safe}", "c1.xhtml", f"<h1>One</h1><p>{words}</p>")],
                     title=f"Title {xml_safe}", author=f"\u202eAuthor")
    bomb = make_epub(tmp_path / "bomb.epub", [("One", "c1.xhtml", f"<p>{words}</p>")])
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf:  # refused, the message names the member
        zf.writestr(f"{HOSTILE}.xhtml", b"\0" * (11 << 20))
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", str(book), str(empty), str(epub), str(bomb))
    assert code == 1  # the empty one and the bomb failed
    assert "FAKE: all good evil.xhtml" in err and "zip bomb" in err
    for text in (out, err):
        assert not any(c in text for c in "\x1b\x07\u202e"), text
    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    infos = json.loads(out)
    assert len(infos) == 4
    for i in infos:
        code, out, _ = run(capsys, data, tiny_model_dir, "info", str(i["id"]), "--json")
        chapters = json.loads(out)["chapters"]
        for v in (i["title"], i["author"] or "", i["error"] or "", i["path"], *chapters):
            assert not any(c in v for c in "\x1b\x07\u202e\u200f"), v
    titles = {i["title"] for i in infos}
    assert "FAKE: all good evil-empty.md" in titles and any(t.startswith("Title evil") for t in titles), titles
    assert any(i["author"] == "Author" for i in infos)
    for argv in (["list"], ["info", str(infos[2]["id"])]):
        code, out, _ = run(capsys, data, tiny_model_dir, *argv)
        assert code == 0 and not any(c in out for c in "\x1b\x07\u202e"), out


def zip_version_10_9(path: Path) -> None:
    """Every member's 'version needed to extract' says 10.9: zipfile raises NotImplementedError."""
    raw = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 4), (b"PK\x01\x02", 6)):
        i = raw.find(sig)
        while i != -1:
            raw[i + offset:i + offset + 2] = (109).to_bytes(2, "little")
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))


def test_an_unexpected_reader_error_is_one_line_with_the_traceback_in_the_log(capsys, tmp_path, tiny_model_dir,
                                                                               log_folder):
    from tests.app.test_readers_epub import make_epub

    words = "Plenty of ordinary words fill this chapter so that it counts as one. " * 3
    book = make_epub(tmp_path / "future.epub", [("One", "c1.xhtml", f"<p>{words}</p>")])
    zip_version_10_9(book)
    with pytest.raises(NotImplementedError):
        with zipfile.ZipFile(book) as zf:
            zf.read("mimetype")
    code, out, err = run(capsys, tmp_path / "data", tiny_model_dir, "ingest", "--quiet", str(book))
    assert code == 1 and one_plain_line(err), err
    assert "future.epub" in err and "not supported" in err
    log = (log_folder / "infini-cli.log").read_text()
    assert "Traceback" in log and "NotImplementedError" in log
    # --verbose shows the details on the terminal as well
    code, out, err = run(capsys, tmp_path / "data2", tiny_model_dir, "--verbose", "ingest", "--quiet", str(book))
    assert code == 1 and "NotImplementedError" in err


def test_an_unexpected_error_is_one_line_pointing_at_the_log(capsys, tmp_path, tiny_model_dir, monkeypatch,
                                                             log_folder):
    def broken(ctx, args):
        raise RuntimeError("\x1b[2Jsomething inside broke")

    monkeypatch.setattr(cli, "cmd_list", broken)
    code, _, err = run(capsys, tmp_path / "data", tiny_model_dir, "list")
    assert code == 1 and one_plain_line(err) and "RuntimeError" in err and str(log_folder) in err
    assert "Traceback" in (log_folder / "infini-cli.log").read_text()


def test_identical_empty_files_each_under_its_own_name(capsys, tmp_path, tiny_model_dir):
    names = [f"empty.{ext}" for ext in ("txt", "md", "pdf", "epub", "html")]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    code, out, err = run(capsys, tmp_path / "data", tiny_model_dir, "ingest", *(str(tmp_path / n) for n in names))
    assert code == 1 and out == ""
    for n in names:
        assert f"infini: {n} is empty\n" in err
    code, out, _ = run(capsys, tmp_path / "data", tiny_model_dir, "list", "--json")
    rows = {i["title"]: i for i in json.loads(out)}
    assert sorted(rows) == sorted(names)
    for n in names:
        assert rows[n]["status"] == "failed" and rows[n]["error"] == f"{n} is empty"
    # again: the same rows, not new ones
    run(capsys, tmp_path / "data", tiny_model_dir, "ingest", *(str(tmp_path / n) for n in names))
    code, out, _ = run(capsys, tmp_path / "data", tiny_model_dir, "list", "--json")
    assert len(json.loads(out)) == len(names)


# ---- long readings ----


def test_a_long_reading_is_asked_about_and_a_huge_one_refused(capsys, tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=3)
    monkeypatch.setitem(cli.ASSUMED_RATE, "cpu", 0.01)  # so slow that any book takes more than an hour
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", str(book))  # stdin is no terminal
    assert code == 1 and one_plain_line(err), err
    assert "--yes" in err and "assumed" in err and ("hours" in err or "days" in err)
    code, out, _ = run(capsys, data, tiny_model_dir, "list", "--json")
    (info,) = json.loads(out)
    assert info["segments_done"] == 0 and info["status"] == "cancelled"  # not started, nothing half-written
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", "--yes", str(book))
    assert code == 0 and int(out) == info["id"], err
    # now the rate is measured: fast enough for another book without a question
    other = write_book(tmp_path / "other.txt", chapters=2)
    assert cli.ASSUMED_RATE["cpu"] == 0.01
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", str(other))
    assert code == 0, err
    # and a measured rate too slow for the next one: the question says it was measured
    monkeypatch.setattr(cli, "CONFIRM_ABOVE_S", 0)
    third = write_book(tmp_path / "third.txt", chapters=2, paragraphs=3)
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", str(third))
    assert code == 1 and "measured" in err and one_plain_line(err), err
    # above the size limit: refused before it is split, with a clear line
    big = write_book(tmp_path / "big.txt", chapters=4)
    code, out, err = run(capsys, data, tiny_model_dir, "ingest", "--quiet", "--yes", "--max-tokens", "100", str(big))
    assert code == 1 and one_plain_line(err) and "too long" in err and "--max-tokens" in err, err


# ---- two processes, one library ----


def test_the_same_book_read_twice_at_once(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=3)
    first = spawn(data, tiny_model_dir, "ingest", "--quiet", str(book), env={"T_SLOW_SEGMENT": "3"})
    try:
        deadline = time.time() + 240
        while not reading_started(data):  # the first is reading now, slowly
            assert first.poll() is None and time.time() < deadline, first.communicate()[1]
            time.sleep(0.2)
        second = spawn(data, tiny_model_dir, "ingest", str(book))
        out2, err2 = second.communicate(timeout=300)
        assert second.returncode == 1 and one_plain_line(err2), err2
        assert "being read by another process" in err2 and "IntegrityError" not in err2
        assert first.poll() is None  # still reading
    finally:
        first.kill()  # kill -9: its lock goes with it, and the reading resumes where it was stored
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(book))
    assert proc.communicate(timeout=300) and proc.returncode == 0
    proc = spawn(data, tiny_model_dir, "list", "--json")
    (info,) = json.loads(proc.communicate(timeout=120)[0])
    assert info["status"] == "ready" and info["segments_done"] == info["segments_total"]
    assert integrity_ok(data)


def test_a_unique_conflict_without_a_lock_says_the_book_is_being_read(library, tiny_reader, tmp_path, monkeypatch):
    """Where no lock file is shared (a database server), the database's constraint decides."""
    from infini_reader.app.core import ingest

    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    assert [e.phase for e in ingest.ingest_file(library, tiny_reader, book)][-1] == "ready"
    monkeypatch.setattr(ingest, "lock_folder", lambda url: None)
    monkeypatch.setattr(library, "snapshot_id", lambda *a: None)  # as if the other process came in between
    events = list(ingest.ingest_file(library, tiny_reader, book))
    assert events[-1].phase == "failed" and events[-1].message == ingest.BEING_READ


def test_a_database_error_during_the_reading_is_stored_and_shown_plain(library, tiny_reader, tmp_path, monkeypatch):
    """A write that fails part way through the model pass: the reading is marked failed with the plain
    line, never the database's own text."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from infini_reader.app.core import ingest

    def full(*a, **kw):
        raise OperationalError("UPDATE memory_snapshots SET memory=?", {}, sqlite3.OperationalError(
            "database or disk is full"))

    monkeypatch.setattr(library, "save_progress", full)
    events = list(ingest.ingest_file(library, tiny_reader, write_book(tmp_path / "b.txt", chapters=2)))
    assert events[-1].phase == "failed"
    from infini_reader.app.core.errors import DISK_FULL

    assert events[-1].message == DISK_FULL
    (info,) = library.infos(fingerprint=tiny_reader.fingerprint)
    assert info.error == DISK_FULL


def test_database_errors_are_explained():
    from sqlalchemy.exc import IntegrityError, OperationalError

    def op(msg):
        return OperationalError("INSERT …", {}, sqlite3.OperationalError(msg))

    assert "disk is full" in database_message(op("database or disk is full"))
    assert "read-only" in database_message(op("attempt to write a readonly database"))
    assert "busy" in database_message(op("database is locked"))
    unique = IntegrityError("INSERT …", {}, sqlite3.IntegrityError(
        "UNIQUE constraint failed: memory_snapshots.document_id, memory_snapshots.model_fingerprint"))
    assert "being read by another process" in database_message(unique)
    assert database_message(ValueError("x")) is None


def test_a_busy_library_is_one_line(tmp_path, tiny_model_dir):
    """Another process holds the write lock past the busy timeout: `rm` says the library is busy."""
    data = tmp_path / "data"
    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(book))
    assert proc.communicate(timeout=300)[1] is not None and proc.returncode == 0
    holder = sqlite3.connect(data / "library.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        proc = spawn(data, tiny_model_dir, "rm", "1")
        _, err = proc.communicate(timeout=300)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1 and one_plain_line(err) and "busy" in err, err


# ---- the disk ----




def test_a_full_disk_is_one_line_and_leaves_the_library_intact(small_disk, tmp_path, tiny_model_dir):
    data = small_disk / "data"
    first = write_book(tmp_path / "first.txt", chapters=2)
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(first))
    assert proc.communicate(timeout=300) and proc.returncode == 0
    filler = fill(small_disk)
    second = write_book(tmp_path / "second.txt", chapters=8, paragraphs=20)
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(second))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and one_plain_line(err) and "disk is full" in err, err
    filler.unlink()
    assert integrity_ok(data)
    proc = spawn(data, tiny_model_dir, "list", "--json")
    infos = json.loads(proc.communicate(timeout=120)[0])
    assert infos[0]["title"] == "first" and infos[0]["status"] == "ready"
    assert all(i["status"] != "ready" for i in infos[1:])  # the second: not there, or not read
    # the space back, the same command reads the second book
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(second))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_a_read_only_library_is_one_line(small_disk, tmp_path, tiny_model_dir):
    data = small_disk / "data"
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(write_book(tmp_path / "first.txt", chapters=2)))
    assert proc.communicate(timeout=300) and proc.returncode == 0
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(write_book(tmp_path / "second.txt", chapters=2)))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and one_plain_line(err) and "read-only" in err, err


# ---- kill -9 ----


def read_then_kill(data, model, argv, env) -> None:
    proc = spawn(data, model, *argv, env=env)
    try:
        deadline = time.time() + 240
        while not proc.stdout.read(1):  # the first streamed character: it is writing now
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()


@pytest.fixture
def read_book(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    proc = spawn(data, tiny_model_dir, "ingest", "--quiet", str(write_book(tmp_path / "lighthouse.txt", chapters=2)))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return data


def test_kill_during_ask_leaves_no_half_answer(read_book, tiny_model_dir):
    data = read_book
    question = "Why did the storm come in from the west, and what did the keeper feel?"  # generated, streamed
    read_then_kill(data, tiny_model_dir, ["ask", "1", question], {"T_SLOW_WRITE": "0.2"})
    assert integrity_ok(data)
    with sqlite3.connect(data / "library.sqlite3") as db:
        before = db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    proc = spawn(data, tiny_model_dir, "ask", "1", question, "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    answer = json.loads(out)["answer"]
    assert len(answer) > 10  # long enough to have been cut by the kill, had it been stored as it streamed
    with sqlite3.connect(data / "library.sqlite3") as db:
        after = db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    # the killed turn is stored whole (the same answer: greedy) or not at all, never cut off
    assert after[len(before):] == [("user", question), ("assistant", answer)]
    assert before in ([], [("user", question), ("assistant", answer)]), before


def test_kill_during_summarize_leaves_no_half_summary(read_book, tiny_model_dir, tmp_path):
    from infini_reader.app.core.summaries import PARTS_KEY

    data = read_book
    whole = tmp_path / "uninterrupted"
    shutil.copytree(data, whole)
    proc = spawn(whole, tiny_model_dir, "summarize", "1", "--chapter", "1", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    expected = json.loads(out)["summary"]
    read_then_kill(data, tiny_model_dir, ["summarize", "1", "--chapter", "1"], {"T_SLOW_WRITE": "0.2"})
    assert integrity_ok(data)
    with sqlite3.connect(data / "library.sqlite3") as db:
        rows = db.execute("SELECT section_idx, text FROM summaries").fetchall()
    for idx, text in rows:
        if idx is not None and idx <= PARTS_KEY:  # the notes of the parts finished so far: whole notes
            notes = json.loads(text)["notes"]
            assert all(isinstance(n, str) and n.strip() for n in notes)
        else:  # a finished summary is stored whole, never in part
            assert text == expected
    proc = spawn(data, tiny_model_dir, "summarize", "1", "--chapter", "1", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["summary"] == expected  # it continued to the summary an uninterrupted run wrote


# ---- the network ----


def test_ingest_and_ask_use_no_network(tmp_path, tiny_model_dir):
    """No socket but local ones, no name looked up: Python's sockets refused and audited in the
    processes, and where strace is installed every process and thread (C libraries too) traced."""
    data, log = tmp_path / "data", tmp_path / "network.log"
    book = write_book(tmp_path / "lighthouse.txt", chapters=2)
    env = {"T_NO_NETWORK": str(log)}
    from infini_reader.app.core import embeddings

    if not all((embeddings.model_folder() / n).is_file() for n in embeddings.FILES):
        env["INFINI_NO_EMBEDDINGS"] = "1"  # not installed: installing it is the one download there is
    strace = shutil.which("strace")
    trace = tmp_path / "trace.txt"
    # onnxruntime (under pymupdf) looked up its telemetry servers seconds after loading: the first run lingers
    for argv, linger in ((["ingest", "--quiet", str(book)], "15"), (["ask", "1", "Who keeps the light?"], "0")):
        env["T_LINGER"] = linger
        cmd = [sys.executable, "-c", _RUNNER, "--data-dir", str(data), "--model", str(tiny_model_dir),
               "--device", "cpu", *argv]
        if strace:
            cmd = [strace, "-f", "-qq", "-e", "trace=socket,connect", "-o", str(trace), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
        assert not log.exists(), log.read_text()
        if strace and trace.exists():
            net = [line for line in trace.read_text().splitlines()
                   if ("socket(" in line or "connect(" in line) and "AF_UNIX" not in line and "AF_LOCAL" not in line
                   and "AF_NETLINK" not in line]
            assert net == [], "\n".join(net[:10])
