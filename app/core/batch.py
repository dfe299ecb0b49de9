"""Many books: a folder's books found, and read by several processes at once on this machine.

`find_books` turns the paths given (files and folders, folders searched recursively for the formats
the readers know) into a list of files. `read_in_parallel` reads them with N worker processes
(spawned, not forked: each loads its own model, with cores/N threads), each writing into the same
library; the caller gets every book's progress and outcome as `(index, Progress)` pairs. A worker
that dies mid-book (killed, out of memory) takes only its process down: the pool is started again
and the books not finished are read again, resuming from their last stored snapshot
(app/core/ingest.py).

Reading on a Ray cluster (many machines, GPUs) is app/core/cluster.py; both share the event shape.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import clean_line

log = logging.getLogger(__name__)

# What one worker needs besides its share of the cores: the built-in model in float32 (0.55 GB),
# its activations for one segment and the Python/torch runtime. Measured about 1.1 GB resident on
# the built-in model (docs/scale.md); rounded up.
WORKER_MEMORY = 1_500_000_000
THREADS_PER_WORKER = 2  # below this a CPU worker's matrix products lose more than a second process gains
RESTARTS = 2  # a pool whose worker died is started again this many times before the rest is given up


def known_suffixes() -> tuple[str, ...]:
    from .readers import SUPPORTED

    return SUPPORTED


def find_books(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The files to read, in order: a file as given (whatever its name: the readers judge it), a
    folder's files of the known formats, recursively, sorted, hidden files and folders skipped.
    Returns (files, problems): one plain line for each path that gave nothing."""
    suffixes = set(known_suffixes())
    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = []
            for root, dirs, names in os.walk(p, onerror=lambda e: problems.append(
                    f"{clean_line(str(e.filename or p))}: cannot be searched ({clean_line(e.strerror or str(e))})")):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in suffixes]
            if not found:
                problems.append(f"{clean_line(str(p))}: no books in this folder (known formats: {', '.join(sorted(suffixes))})")
            for f in sorted(found):
                add(f)
        elif p.exists():
            add(p)
        else:
            problems.append(f"{clean_line(str(p))}: no such file or folder")
    return files, problems


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux: MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers(books: int, device: str = "auto", cores: int | None = None, memory: int | None = None) -> int:
    """How many local workers to start for `books` books: on the CPU one per THREADS_PER_WORKER
    cores, as many as the available memory holds (WORKER_MEMORY each); on a GPU one per GPU that
    `device` names (all of them for "cuda"/"auto", one for "cuda:N"); never more than the books."""
    if books <= 1:
        return 1
    if device.startswith("cuda") or device == "auto":
        gpus = _gpus()
        if gpus:
            return max(1, min(books, gpus if device in ("cuda", "auto") else 1))
        if device.startswith("cuda"):
            return 1  # the worker says there is no GPU, in one line
    cores = cores or _cores()
    memory = available_memory() if memory is None else memory
    n = max(1, cores // THREADS_PER_WORKER)
    if memory is not None:
        n = min(n, max(1, memory // WORKER_MEMORY))
    return max(1, min(n, books))


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_threads(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or _cores()) // max(1, workers))


def worker_device(device: str, index: int) -> str:
    """Worker `index`'s device: with "cuda" and several GPUs the workers take them in turn."""
    if device == "cuda":
        gpus = _gpus()
        return f"cuda:{index % gpus}" if gpus > 1 else device
    return device


def where() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}"


# ---- the worker processes ----

_worker: dict = {}


@dataclass
class WorkerSpec:
    """What a worker needs to start: plain data, sent to a spawned process."""

    db_url: str
    model: str = "builtin"
    device: str = "auto"
    adapter: str = "auto"
    dtype: str = "auto"
    threads: int = 1
    max_tokens: int | None = None
    checkpoint_segments: int = 8
    log_file: str | None = None  # the caller's log file: a worker's details (tracebacks) go there, not the terminal


def worker_logging(log_file: str | None) -> None:
    """A worker process logs to its caller's log file (appending, lines tagged with the process id),
    never to the terminal."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler: logging.Handler = logging.NullHandler()
    if log_file:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        except OSError:
            pass
    root.addHandler(handler)
    logging.captureWarnings(True)


def _init_worker(spec: WorkerSpec, counter, events) -> None:
    """Runs once in each worker process: its threads, its model, its library."""
    import torch

    from .library import Library
    from .models import ModelChoice, load_engine

    worker_logging(spec.log_file)
    torch.set_num_threads(spec.threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _worker.update(events=events, spec=spec, error=None)
    try:
        choice = ModelChoice(spec.model, worker_device(spec.device, index), spec.dtype, spec.adapter)
        _worker["engine"] = load_engine(choice)
        _worker["library"] = Library(spec.db_url)
    except Exception as exc:  # said once per book in one line: the pool must not die of it
        log.exception("worker could not start")
        _worker["error"] = _one_line(exc)


def _one_line(exc: BaseException) -> str:
    from .errors import database_message

    return database_message(exc) or clean_line(str(exc)) or type(exc).__name__


def _read_one(index: int, path: str) -> dict:
    """Read one book in a worker; its progress goes to the caller through the events queue as it goes
    (phase changes, each stored snapshot, at most one a second otherwise); the last event is returned."""
    from .ingest import Progress, ingest_file

    name = clean_line(Path(path).name)
    if _worker.get("error"):
        return asdict(Progress(None, name, "failed", message=f"the worker could not start: {_worker['error']}",
                               worker=where()))
    spec, events = _worker["spec"], _worker["events"]
    last, last_phase, t = None, None, 0.0
    try:
        for ev in ingest_file(_worker["library"], _worker["engine"], path, max_tokens=spec.max_tokens,
                              checkpoint_segments=spec.checkpoint_segments):
            ev.worker = where()
            last = ev
            if ev.phase in ("parsing", "reading") and (ev.phase != last_phase or ev.saved
                                                        or time.monotonic() - t >= 1.0):
                events.put((index, asdict(ev)))
                last_phase, t = ev.phase, time.monotonic()
    except Exception as exc:
        log.exception("reading %s failed", name)
        return asdict(Progress(last.document_id if last else None, name, "failed", message=_one_line(exc),
                               worker=where()))
    if last is None:
        last = Progress(None, name, "failed", message="nothing was read", worker=where())
    if _worker["engine"] is not None:
        last.model_fingerprint = _worker["engine"].fingerprint
    return asdict(last)


def read_in_parallel(spec: WorkerSpec, paths: list[Path], workers: int) -> Iterator[tuple[int, object]]:
    """Read `paths` with `workers` spawned processes into `spec.db_url`. Yields (index into paths,
    Progress) as the books go, every book's last event (ready, failed, cancelled) exactly once."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .ingest import Progress

    ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads or a GPU
    left = list(range(len(paths)))
    restarts = 0
    while left:
        events, counter = ctx.Queue(), ctx.Value("i", 0)
        pool = ProcessPoolExecutor(min(workers, len(left)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(spec, counter, events))
        futures = {pool.submit(_read_one, i, str(paths[i])): i for i in left}
        broken: list[int] = []
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                yield from _drain(events, Progress)
                for f in done:
                    i = futures[f]
                    try:
                        yield i, Progress(**f.result())
                    except BrokenProcessPool:
                        broken.append(i)
                    except Exception as exc:  # a result that could not come back
                        yield i, Progress(None, clean_line(paths[i].name), "failed", message=_one_line(exc))
            yield from _drain(events, Progress)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        left = sorted(broken)
        if left:
            restarts += 1
            if restarts > RESTARTS:
                for i in left:
                    yield i, Progress(None, clean_line(paths[i].name), "failed",
                                      message="its worker process stopped again and again; run the command again "
                                              "to resume")
                return
            for i in left:
                yield i, Progress(None, clean_line(paths[i].name), "requeued",
                                  message="a worker process stopped; the book goes on from its last stored point")


def _drain(events, Progress) -> Iterator[tuple[int, object]]:
    while True:
        try:
            i, ev = events.get_nowait()
        except (queue_mod.Empty, OSError, EOFError, ValueError):
            return
        yield i, Progress(**ev)


def summary(outcomes: dict[int, object], total: int) -> str:
    """One line at the end of many books: how many were read, found already read, failed, not started."""
    ready = sum(1 for p in outcomes.values() if p.phase == "ready" and not p.reused)
    reused = sum(1 for p in outcomes.values() if p.phase == "ready" and p.reused)
    failed = sum(1 for p in outcomes.values() if p.phase == "failed")
    stopped = sum(1 for p in outcomes.values() if p.phase == "cancelled")
    tokens = sum(p.tokens_done for p in outcomes.values() if p.phase == "ready" and not p.reused)
    parts = [f"{ready} read" + (f" ({tokens:,} tokens)" if ready else "")]
    if reused:
        parts.append(f"{reused} already in the library")
    if failed:
        parts.append(f"{failed} failed")
    if stopped:
        parts.append(f"{stopped} stopped (run again to resume)")
    if total - len(outcomes) > 0:
        parts.append(f"{total - len(outcomes)} not started")
    return f"{total} book{'s' if total != 1 else ''}: " + ", ".join(parts)
