"""Reading many books on a Ray cluster, into one shared library (PostgreSQL).

    infini --db postgresql+psycopg://reader@dbhost/infini ingest --ray ADDRESS FOLDER

The caller reads each file and sends its bytes (workers on other machines cannot see the caller's
files); each worker is a Ray actor that loads the model once on its own device (a GPU when Ray gives
it one), writes the file to a temporary folder, checks its hash and reads it with `ingest_file`
into the shared library, storing a snapshot every few segments. Progress comes back through a Ray
queue, each book's outcome as its task's result. A worker that dies mid-book (killed, its machine
lost) fails its task: the caller starts a new worker in its place and hands the book to the next
free worker, which resumes from the last stored snapshot; the book's lock (a PostgreSQL advisory
lock) was let go by the server when the dead worker's connection closed.

Ray is an optional extra (`pip install 'infini-reader[ray]'`), imported only here and only when
asked for; the desktop application never imports this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from .batch import WorkerSpec, _one_line, where, worker_logging
from .errors import clean_line

log = logging.getLogger(__name__)

MISSING = "reading on a cluster needs Ray, which is not installed: pip install 'infini-reader[ray]' (or: pip install ray)"
ATTEMPTS = 3  # a book is handed to a worker at most this many times when workers die under it
BUSY_RETRIES = 30  # a requeued book whose lock the dead worker's connection still holds: retried every 2 s
MAX_FILE = 1 << 30  # a file sent to the cluster (bytes through Ray's object store)
START_TIMEOUT = 600  # seconds for the workers to be placed and load their model


class ClusterError(RuntimeError):
    """Reading on the cluster cannot start or go on (no Ray, no cluster, no model): one plain line."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(MISSING) from None
    return ray


def require_ray() -> None:
    """ClusterError (one line: how to install it) where Ray is missing."""
    _ray()


class Reader:
    """One worker: a model on its device and the shared library, reading the books it is handed."""

    def __init__(self, spec: WorkerSpec):
        self.spec, self.error, self.engine = spec, None, None
        self.folder = Path(tempfile.mkdtemp(prefix="infini-worker-"))
        worker_logging(None)  # the details stay in Ray's worker logs, not the caller's terminal
        try:
            import torch

            from .library import Library
            from .models import ModelChoice, load_engine

            torch.set_num_threads(spec.threads)
            device = spec.device
            if device.startswith("cuda"):  # Ray gives the actor its GPU as the only one it sees
                device = "cuda"
            self.engine = load_engine(ModelChoice(spec.model, device, spec.dtype, spec.adapter))
            self.library = Library(spec.db_url)
        except Exception as exc:  # said by `hello`, in one line: an actor that fails to start says nothing useful
            log.exception("cluster worker could not start")
            self.error = _one_line(exc)

    def hello(self) -> dict:
        return {"worker": where(), "pid": os.getpid(), "host": socket.gethostname(), "error": self.error,
                "device": str(self.engine.device) if self.engine is not None else None,
                "fingerprint": self.engine.fingerprint if self.engine is not None else None}

    def read(self, index: int, name: str, origin: str, digest: str, data: bytes, events) -> dict:
        from .ingest import Progress, ingest_file

        title = clean_line(name)
        if self.error:
            return asdict(Progress(None, title, "failed", message=f"the worker could not start: {self.error}",
                                   worker=where()))
        if hashlib.sha256(data).hexdigest() != digest:
            return asdict(Progress(None, title, "failed", message="the file changed on its way to the worker",
                                   worker=where()))
        folder = self.folder / str(index)
        folder.mkdir(exist_ok=True)
        path = folder / Path(name).name
        last, last_phase, t = None, None, 0.0
        try:
            path.write_bytes(data)
            for ev in ingest_file(self.library, self.engine, path, max_tokens=self.spec.max_tokens,
                                  checkpoint_segments=self.spec.checkpoint_segments, origin=origin):
                ev.worker = where()
                last = ev
                if ev.phase in ("parsing", "reading") and (ev.phase != last_phase or ev.saved
                                                            or time.monotonic() - t >= 1.0):
                    try:
                        events.put((index, asdict(ev)), timeout=10)
                    except Exception:  # the caller's queue is gone or full: the reading goes on regardless
                        log.warning("progress of %s not sent", title, exc_info=True)
                    last_phase, t = ev.phase, time.monotonic()
        except Exception as exc:
            log.exception("reading %s failed", title)
            last = Progress(last.document_id if last else None, title, "failed", message=_one_line(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if last is None:
            last = Progress(None, title, "failed", message="nothing was read")
        last.worker, last.model_fingerprint = where(), self.engine.fingerprint
        return asdict(last)


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` ("local": start one on this machine; "auto": the one this machine
    belongs to; HOST:PORT or ray://HOST:PORT). Returns True when this call started the connection
    (the caller shuts it down); an already connected process keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address in (None, "", "local"):
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {clean_line(str(exc), 200)}") from None
    return True


def cluster_workers(device: str, threads: int) -> int:
    """Workers the cluster holds: one per GPU for a GPU device, else one per `threads` CPUs."""
    res = _ray().cluster_resources()
    if device.startswith("cuda"):
        return max(1, int(res.get("GPU", 0)))
    return max(1, int(res.get("CPU", 1)) // max(1, threads))


def read_on_ray(address: str | None, spec: WorkerSpec, paths: list[Path], workers: int | None = None,
                attempts: int = ATTEMPTS) -> Iterator[tuple[int, object]]:
    """Read `paths` on the cluster at `address` into the shared library `spec.db_url`. Yields (index
    into paths, Progress): each book's progress as its worker reports it, "requeued" when a worker
    died under it, and its last event (ready, failed, cancelled) exactly once."""
    from .ingest import BEING_READ, Progress

    if spec.db_url.startswith("sqlite") and address not in (None, "", "local"):
        raise ClusterError("a reading cluster writes into a shared library: give --db postgresql+psycopg://…")
    ray = _ray()
    started = connect(address, num_cpus=None)
    try:
        from ray.util.queue import Queue

        n = max(1, min(workers or cluster_workers(spec.device, spec.threads), len(paths)))
        gpu = spec.device.startswith("cuda")
        actor_class = ray.remote(num_cpus=0 if gpu else spec.threads, num_gpus=1 if gpu else 0, max_restarts=0)(Reader)
        events = Queue(actor_options={"num_cpus": 0})

        def start_worker():
            return actor_class.remote(spec)

        if gpu and not ray.cluster_resources().get("GPU"):
            raise ClusterError("the Ray cluster has no GPU; read with --device cpu, or add machines with GPUs")
        actors = [start_worker() for _ in range(n)]
        try:
            hellos = ray.get([a.hello.remote() for a in actors], timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"the {n} workers did not start within {START_TIMEOUT // 60} minutes: the cluster "
                               f"may lack the {'GPUs' if gpu else 'CPUs'} asked for (--workers sets how many)") from None
        if all(h["error"] for h in hellos):
            raise ClusterError(f"the workers could not start: {hellos[0]['error']}")
        for h in hellos:
            if h["error"]:  # that machine lacks something (the model, the GPU): the others read
                log.warning("a worker could not start (%s): %s", h["worker"], h["error"])
        idle = deque(a for a, h in zip(actors, hellos) if not h["error"])
        log.info("cluster workers: %s", ", ".join(f"{h['worker']} ({h['device']})" for h in hellos if not h["error"]))

        todo = deque(range(len(paths)))
        tries = {i: 0 for i in todo}
        busy_tries = {i: 0 for i in todo}
        not_before: dict[int, float] = {}
        requeued: set[int] = set()
        running: dict = {}  # ObjectRef -> (index, actor)
        replacements = 0
        while todo or running:
            while idle:
                now = time.monotonic()  # a book waiting for a dead worker's lock to go waits its turn
                i = next((j for j in todo if not_before.get(j, 0) <= now), None)
                if i is None:
                    break
                todo.remove(i)
                p = paths[i]
                try:
                    data = p.read_bytes() if p.stat().st_size <= MAX_FILE else None
                except OSError as exc:
                    from .errors import os_message

                    yield i, Progress(None, clean_line(p.name), "failed", message=os_message(exc))
                    continue
                if data is None:
                    yield i, Progress(None, clean_line(p.name), "failed", message="too large to send to the cluster")
                    continue
                actor, tries[i] = idle.popleft(), tries[i] + 1
                digest = hashlib.sha256(data).hexdigest()
                ref = actor.read.remote(i, p.name, os.path.abspath(p), digest, ray.put(data), events)
                running[ref] = (i, actor)
            if not running:
                time.sleep(0.2)
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            yield from _drain(events)
            for ref in done:
                i, actor = running.pop(ref)
                try:
                    result = Progress(**ray.get(ref))
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as exc:
                    log.warning("worker died reading %s: %s", paths[i], exc)
                    replacements += 1
                    if replacements <= 4 * n + len(paths):
                        idle.append(start_worker())
                    if tries[i] >= attempts:
                        yield i, Progress(None, clean_line(paths[i].name), "failed",
                                          message=f"its worker died {tries[i]} times; run the command again to resume")
                    else:
                        requeued.add(i)
                        todo.appendleft(i)
                        yield i, Progress(None, clean_line(paths[i].name), "requeued",
                                          message="its worker died; another goes on from the last stored point")
                    if not idle and not running:
                        raise ClusterError("every worker died; the readings so far are stored: run again to resume")
                    continue
                except Exception as exc:  # the task itself failed outside the reading: this book only
                    idle.append(actor)
                    yield i, Progress(None, clean_line(paths[i].name), "failed", message=_one_line(exc))
                    continue
                idle.append(actor)
                if result.phase == "failed" and result.message == BEING_READ and i in requeued \
                        and busy_tries[i] < BUSY_RETRIES:
                    busy_tries[i] += 1  # the dead worker's connection (and lock) may take a moment to go
                    tries[i] -= 1
                    not_before[i] = time.monotonic() + 2.0
                    todo.append(i)
                    continue
                yield i, result
            yield from _drain(events)
    finally:
        if started:
            ray.shutdown()


def _drain(events) -> Iterator[tuple[int, object]]:
    from .ingest import Progress

    while True:
        try:
            items = events.get_nowait_batch(min(events.qsize(), 1000)) if events.qsize() else []
        except Exception:  # the queue's actor went away: the results still come
            return
        if not items:
            return
        for i, ev in items:
            yield i, Progress(**ev)
