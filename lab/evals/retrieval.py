"""Retrieval alone, to choose the fusion's weights: FairytaleQA *train* stories (never the val
split that `qa` reports, nor the needle's planted facts), each question's target the passage that
holds its answer word for word (answers found once in the story, two words or more). Per weight of
the embeddings' ranking beside BM25: how often the top 1 / top 3 passages hold the answer. No
language model is needed: the stories are indexed as the application indexes them (passages,
full-text, embeddings)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from infini_reader.app.core import embeddings
from infini_reader.app.core.answers import RetrievalSettings, find_passages
from infini_reader.app.core.document import Document
from infini_reader.app.core.ingest import index_passages
from infini_reader.app.core.library import Library

from .common import DATA, Table, load_engine, pct, read_jsonl


def add_arguments(p) -> None:
    p.add_argument("--data", default=str(DATA / "fairytaleqa" / "train.jsonl.xz"))
    p.add_argument("--stories", type=int, default=20, help="stories to index (default 20)")
    p.add_argument("--weights", default="0,0.5,1,2,4", help="embedding weights beside BM25 at 1 (0: BM25 alone)")
    p.add_argument("--rerank-weights", default="", help="weights of the closest-sentence reranking, e.g. 1,2")
    p.add_argument("--lm-weights", default="",
                   help="weights of the question-likelihood reranking (loads the model), beside the default "
                        "hybrid's other weights, e.g. 0.5,1,2")
    p.add_argument("--settings", default="",
                   help="hybrid variants, ';'-separated, each RetrievalSettings fields as k=v joined by ',' "
                        "(e.g. 'rrf_k=60;rrf_k=10,bm25_full=0.5'); the model is loaded when lm_weight is not 0")
    p.add_argument("--concat", type=int, default=1,
                   help="stories joined into one book (a long book's many passages; default 1: each story alone)")
    p.add_argument("--skip-stories", type=int, default=0, help="stories skipped first (a second, unseen part)")
    p.add_argument("--only-paraphrased", action="store_true", help="ask only the 'paraphrased' questions")
    p.add_argument("--max-questions", type=int, default=0, help="at most this many questions (0: all)")
    p.add_argument("--paraphrased", type=float, default=0.5,
                   help="questions whose answer passage holds less than this share of their words (by rarity) "
                        "are also reported apart as 'paraphrased'")


class _Cached:
    def __init__(self, inner):
        self.inner, self.memo, self.name = inner, {}, inner.name

    def __call__(self, texts, batch: int = 32):
        new = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if new:
            for t, v in zip(new, self.inner(new, batch)):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts]) if texts else self.inner([])


def run(args) -> dict:
    t0 = time.perf_counter()
    embedder = _Cached(embeddings.default_embedder())
    # the variants embed the same sentences again and again: once is enough (the same vectors)
    original, embeddings.default_embedder = embeddings.default_embedder, lambda: embedder
    try:
        return _run(args, embedder, t0)
    finally:
        embeddings.default_embedder = original


def _run(args, embedder, t0) -> dict:
    weights = [float(w) for w in args.weights.split(",")]
    settings = [("bm25", RetrievalSettings(mode="bm25"))]
    settings += [("embeddings", RetrievalSettings(mode="embeddings"))]
    settings += [(f"bm25 + embeddings w={w:g}",
                  RetrievalSettings(mode="hybrid", embedding_weight=w, memory_weight=0, sentence_weight=0, lm_weight=0))
                 for w in weights if w]
    settings += [(f"bm25 + embeddings w={w:g} + sentence rerank w={r:g}",
                  RetrievalSettings(mode="hybrid", embedding_weight=w, memory_weight=0, sentence_weight=r, lm_weight=0))
                 for w in weights if w for r in [float(x) for x in args.rerank_weights.split(",") if x]]
    lm_weights = [float(x) for x in args.lm_weights.split(",") if x]
    settings += [(f"hybrid (default weights) + question likelihood w={w:g}",
                  RetrievalSettings(mode="hybrid", memory_weight=0, lm_weight=w)) for w in lm_weights]
    import dataclasses
    types = {f.name: f.type for f in dataclasses.fields(RetrievalSettings)}
    for spec in [x.strip() for x in args.settings.split(";") if x.strip()]:
        kw = dict(memory_weight=0.0, lm_weight=0.0)
        for kv in spec.split(","):
            k, v = kv.split("=")
            t = types[k.strip()]
            kw[k.strip()] = (v.strip().lower() in ("1", "true")) if t in (bool, "bool") else (
                int(v) if t in (int, "int") else float(v) if t in (float, "float") else v.strip())
        settings.append((f"hybrid {spec}", RetrievalSettings(mode="hybrid", **kw)))
    need_lm = lm_weights or any(st.lm_weight for _, st in settings)
    engine = load_engine(args.model, args.device, adapter=args.adapter) if need_lm else None
    from infini_reader.app.core.answers import word_coverage

    hits = {name: [] for name, _ in settings}
    para = {name: [] for name, _ in settings}
    items = []
    stories = []
    for n, story in enumerate(read_jsonl(args.data)):
        if n >= args.skip_stories + args.stories:
            break
        if n >= args.skip_stories:
            stories.append(story)
    books = [stories[i : i + args.concat] for i in range(0, len(stories), args.concat)]
    with tempfile.TemporaryDirectory(prefix="infini-retrieval-") as d:
        lib = Library(f"sqlite:///{Path(d) / 'library.sqlite3'}")
        for n, book in enumerate(books):
            text = "\n\n".join(st["text"].strip() for st in book)
            title = " + ".join(st["story"] for st in book)
            doc = Document(title=title, author=None, language="en", format="txt", text=text, sections=[])
            doc_id = lib.add_document(doc, f"book-{n}", len(text))
            list(index_passages(lib, doc_id, title, embedder))
            passages = lib.passages(doc_id)
            low = text.lower()
            for q in (q for st in book for q in st["questions"]):
                ans = q["answer"].strip().lower()
                if len(ans.split()) < 2 or low.count(ans) != 1:
                    continue
                at = low.index(ans)
                target = {p.idx for p in passages if p.char_start <= at < p.char_end}
                tp = passages[min(target)]
                cover = word_coverage(text, q["question"], text[tp.char_start:tp.char_end])
                if (args.only_paraphrased and cover >= args.paraphrased) or (
                        args.max_questions and len(items) >= args.max_questions):
                    continue
                item = {"book": title, "question": q["question"], "answer": q["answer"], "coverage": cover,
                        "modes": {}}
                for name, st in settings:
                    cites = find_passages(lib, engine, doc_id, q["question"], st)
                    idx = [next(p.idx for p in passages if p.char_start == c.char_start) for c in cites]
                    hit = (bool(idx) and idx[0] in target, bool(set(idx[:3]) & target))
                    hits[name].append(hit)
                    if cover < args.paraphrased:
                        para[name].append(hit)
                    item["modes"][name] = hit
                items.append(item)
        lib.Session.kw["bind"].dispose()
    rows = [[name, len(h), pct(np.mean([a for a, _ in h])), pct(np.mean([b for _, b in h])),
             len(para[name]), pct(np.mean([b for _, b in para[name]])) if para[name] else "–"]
            for name, h in hits.items() if h]
    table = Table(f"Retrieval on FairytaleQA train ({len(stories)} stories from {args.skip_stories}, "
                  f"{args.concat} a book): the passage holding the answer",
                  ["system", "n", "top-1", "top-3", f"n (coverage < {args.paraphrased:g})", "top-3 of those"], rows)
    return {"command": "retrieval", "items": items, "tables": [table], "seconds": time.perf_counter() - t0}
