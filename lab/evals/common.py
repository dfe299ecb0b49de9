"""What the evaluations share: data files, temporary libraries, asking, the truncated base model,
scores and tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from infini_reader import engine as eng
from infini_reader.app.core.answers import Citation, RetrievalSettings, ask, clear_chat
from infini_reader.app.core.db import SegmentRow, SnapshotRow
from infini_reader.app.core.ingest import ingest_file
from infini_reader.app.core.library import Library
from infini_reader.app.core.segments import tokenize_with_offsets
from infini_reader.engine.generate import SegmentCache, Stream, detokenize, sample
from infini_reader.engine.quant import resolve_decode
from infini_reader.engine.model import InfiniTransformer
from lab.train.trainer import SHARED_DATA
from infini_reader.app.core import models

DATA = SHARED_DATA  # ../shared/data, or INFINI_SHARED_DATA
BASE_WINDOW = 8192  # the base model's native context (SmolLM2 was trained to 8K positions)
BASE_TOKENS = 7500  # text given to the base model: its window less the question and the answer


def parse_tokens(s: str) -> int:
    """ "32K" → 32768, "2000" → 2000."""
    s = s.strip().upper()
    if s.endswith("K"):
        return int(float(s[:-1]) * 1024)
    if s.endswith("M"):
        return int(float(s[:-1]) * 1024 * 1024)
    return int(s)


def token_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def read_jsonl(path: Path) -> Iterator[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# ---- the model ----


def add_segment_length(p) -> None:
    p.add_argument("--segment-length", type=int, default=0,
                   help="tokens per segment (default: the model's own, 2,048 for the built-in model)")


def load_engine(spec: str, device: str = "cpu", adapter: str | None = "auto", segment_length: int = 0,
                **overrides) -> eng.Engine:
    """The model to measure; `adapter` "auto" (the shipped one for the built-in model), "none", or a
    file; `segment_length` 0 keeps the model's own."""
    adapter = None if adapter in (None, "none") else adapter
    if segment_length:
        overrides["segment_length"] = segment_length
    return models.load_model(spec, device=device, adapter=adapter, **overrides)


def base_engine(e: eng.Engine, window: int = BASE_WINDOW) -> eng.Engine:
    """The same weights with the memory shut (every β at -100) and one segment as long as the base
    model's native window: a plain transformer that sees `window` tokens and nothing else."""
    cfg = dataclasses.replace(e.config, segment_length=window)
    model = InfiniTransformer.for_loading(cfg)
    # an adapter's memory projections (engine/model.py) serve only the memory path, shut here
    model.load_state_dict({k: v for k, v in e.model.state_dict().items() if ".memory_proj." not in k})
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.fill_(-100.0)
    return eng.Engine(
        model.to(device=e.device, dtype=e.dtype), e.tokenizer, f"{e.source} (no memory)", e.tokenizer_json, e.chat
    )


def head_text(e: eng.Engine, text: str, tokens: int) -> str:
    """The start of `text`, at most `tokens` tokens."""
    ids, starts = tokenize_with_offsets(text, e.tokenizer)
    return text if len(ids) <= tokens else text[: int(starts[tokens])]


def tail_text(e: eng.Engine, text: str, tokens: int) -> str:
    """The end of `text`, at most `tokens` tokens."""
    ids, starts = tokenize_with_offsets(text, e.tokenizer)
    return text if len(ids) <= tokens else text[int(starts[len(ids) - tokens]) :]


@torch.inference_mode()
def answers_sharing_prefix(e: eng.Engine, prompts: list, max_new_tokens: int) -> list[str]:
    """Greedy answers (as `Engine.generate` gives them, memory empty) to prompts that share a long
    start (the same text, other questions): the shared tokens are read once."""
    ids = [e.prompt_ids(p) for p in prompts]
    if not ids:
        return []
    first = ids[0].cpu().numpy()
    n0 = min(len(x) for x in ids) - 1  # every prompt keeps at least one token of its own
    for x in ids[1:]:
        differ = np.nonzero(x.cpu().numpy()[:n0] != first[:n0])[0]
        if differ.size:
            n0 = int(differ[0])
    # the decode path `Engine.generate` takes (engine/quant.py), so that the answers are the same
    fast = e.int8_decoder() if resolve_decode(None, e.device) == "int8" else None
    stream = Stream(e.model, None, fast)
    if n0 > 0:
        stream.feed(ids[0][:n0])
    stop = frozenset(e.chat.stop_token_ids if e.chat else ())
    decode = lambda t: e.tokenizer.decode(t, skip_special_tokens=True)
    out = []
    for x in ids:
        s = Stream(e.model, stream.mem, fast)
        s.caches = [
            SegmentCache(None if c.k is None else c.k.clone(), None if c.v is None else c.v.clone(), c.pos, c.dM, c.dz)
            for c in stream.caches
        ]
        logits = s.feed(x[n0:])
        toks = []
        for _ in range(max_new_tokens):
            tok = sample(logits, 0.0, 1.0, None)
            if tok in stop:
                break
            toks.append(tok)
            logits = s.feed(x.new_tensor([tok]))
        out.append("".join(detokenize(iter(toks), decode, [])).strip())
    return out


class CachedGenerate:
    """Stands in for `engine.generate` during an evaluation: a prompt already answered on the same
    memory (two retrieval modes citing the same passages) is answered from the cache. Greedy
    decoding makes the cached answer the one the model would give again."""

    def __init__(self, e: eng.Engine):
        self.engine, self.generate = e, e.generate
        self.store: dict[tuple, list[str]] = {}
        self.hits = self.misses = 0

    def __call__(self, prompt, memory=None, max_new_tokens=256, **kw) -> Iterator[str]:
        ids = self.engine.prompt_ids(prompt).cpu().numpy().tobytes()
        mem = None if memory is None else hashlib.sha1(memory.to_bytes()).hexdigest()
        key = (hashlib.sha1(ids).hexdigest(), mem, max_new_tokens, repr(sorted(kw.items())))  # stop: a list
        if key in self.store:
            self.hits += 1
        else:
            self.misses += 1
            self.store[key] = list(self.generate(prompt, memory, max_new_tokens=max_new_tokens, **kw))
        return iter(self.store[key])


@contextmanager
def cached_generation(e: eng.Engine):
    cache = CachedGenerate(e)
    e.generate = cache
    try:
        yield cache
    finally:
        del e.generate  # the class's method again


@contextmanager
def key_sums_per_head(e: eng.Engine):
    """While ingesting: each segment's own Σσ(K) per layer *and key/value head*, (layers, Hkv, D)
    float32, in reading order. The library keeps them averaged over heads; variants of the
    attribution that score heads apart need them whole."""
    out: list[np.ndarray] = []
    model = e.model
    segment = model.segment

    def spy(idx, mem, caches=None, write_only=False):
        h, deltas = segment(idx, mem, caches, write_only)
        if write_only:  # ingest, not generation
            out.append(torch.stack([dz[0] for _, dz in deltas]).float().cpu().numpy())
        return h, deltas

    model.segment = spy
    try:
        yield out
    finally:
        del model.segment


# ---- libraries ----


@contextmanager
def temporary_library() -> Iterator[tuple[Library, Path]]:
    with tempfile.TemporaryDirectory(prefix="infini-eval-") as d:
        lib = Library(f"sqlite:///{Path(d) / 'library.sqlite3'}")
        try:
            yield lib, Path(d)
        finally:
            lib.Session.kw["bind"].dispose()


def safe_name(title: str) -> str:
    return re.sub(r"[^\w\- ]+", "", title).strip()[:80] or "document"


def ingest_text(lib: Library, e: eng.Engine, folder: Path, title: str, text: str) -> tuple[int, float]:
    """Write `text` to a .txt file named for `title`, read it into the library; (doc id, seconds)."""
    path = folder / f"{safe_name(title)}.txt"
    path.write_text(text, encoding="utf-8")
    t0, last = time.perf_counter(), None
    for ev in ingest_file(lib, e, path):
        last = ev
    if last is None or last.phase != "ready":
        raise RuntimeError(f"reading {path.name} failed: {last.message if last else 'no events'}")
    return last.document_id, time.perf_counter() - t0


def segment_starts(lib: Library, e: eng.Engine, doc_id: int) -> np.ndarray:
    from sqlalchemy import select

    with lib.Session() as s:
        snap = s.scalar(
            select(SnapshotRow.id).where(
                SnapshotRow.document_id == doc_id, SnapshotRow.model_fingerprint == e.fingerprint
            )
        )
        return np.array(
            s.scalars(
                select(SegmentRow.char_start).where(SegmentRow.snapshot_id == snap).order_by(SegmentRow.idx)
            ).all()
        )


def ask_once(
    lib: Library,
    e: eng.Engine,
    doc_id: int,
    question: str,
    mode: str = "fused",
    reread: bool = True,
    max_new_tokens: int = 64,
    **settings,
) -> tuple[str, list[Citation]]:
    """The answer and its citations, asked afresh (no earlier exchange in the prompt). `settings`:
    RetrievalSettings fields besides the mode (their defaults otherwise)."""
    clear_chat(lib, doc_id)
    answer, cites = "", []
    st = RetrievalSettings(mode=mode, **settings)
    for ev in ask(lib, e, doc_id, question, reread=reread, max_new_tokens=max_new_tokens, settings=st):
        if ev.kind == "error":
            raise RuntimeError(ev.text)
        if ev.kind == "citations":
            cites = ev.citations
        elif ev.kind == "done":
            answer = ev.text
    return answer, cites


# ---- scores and tables ----


def has_key(answer: str, key: str) -> bool:
    """The key word appears in the answer, as a word (a plural or possessive ending allowed)."""
    return re.search(r"\b" + re.escape(key.lower()) + r"(?:s|es|'s)?\b", answer.lower()) is not None


_ROUGE = {}


def rouge(prediction: str, references: list[str], metrics=("rougeL",)) -> dict[str, dict[str, float]]:
    """F1 per metric, the best over the references and their mean (rouge-score, Porter stemmer)."""
    from rouge_score import rouge_scorer

    key = tuple(metrics)
    if key not in _ROUGE:
        _ROUGE[key] = rouge_scorer.RougeScorer(list(metrics), use_stemmer=True)
    scores = [_ROUGE[key].score(ref, prediction) for ref in references if ref and ref.strip()]
    return {
        m: {
            "max": max((s[m].fmeasure for s in scores), default=0.0),
            "mean": float(np.mean([s[m].fmeasure for s in scores])) if scores else 0.0,
        }
        for m in metrics
    }


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells)])


@dataclasses.dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list]

    def markdown(self) -> str:
        return f"**{self.title}**\n\n" + markdown_table(self.headers, self.rows)


def write_json(path: str | Path | None, obj: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")
        tmp.replace(path)


def _plain(o):
    if isinstance(o, Table):
        return dataclasses.asdict(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
