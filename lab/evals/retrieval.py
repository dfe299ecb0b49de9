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


def run(args) -> dict:
    t0 = time.perf_counter()
    embedder = embeddings.default_embedder()
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
    engine = load_engine(args.model, args.device, adapter=args.adapter) if lm_weights else None
    hits = {name: [] for name, _ in settings}
    items = []
    with tempfile.TemporaryDirectory(prefix="infini-retrieval-") as d:
        lib = Library(f"sqlite:///{Path(d) / 'library.sqlite3'}")
        for n, story in enumerate(read_jsonl(args.data)):
            if n >= args.stories:
                break
            doc = Document(title=story["story"], author=None, language="en", format="txt", text=story["text"],
                           sections=[])
            doc_id = lib.add_document(doc, f"story-{n}", len(story["text"]))
            list(index_passages(lib, doc_id, story["story"], embedder))
            passages = lib.passages(doc_id)
            low = story["text"].lower()
            for q in story["questions"]:
                ans = q["answer"].strip().lower()
                if len(ans.split()) < 2 or low.count(ans) != 1:
                    continue
                at = low.index(ans)
                target = {p.idx for p in passages if p.char_start <= at < p.char_end}
                item = {"story": story["story"], "question": q["question"], "answer": q["answer"], "modes": {}}
                for name, st in settings:
                    cites = find_passages(lib, engine, doc_id, q["question"], st)
                    idx = [next(p.idx for p in passages if p.char_start == c.char_start) for c in cites]
                    hit = (bool(idx) and idx[0] in target, bool(set(idx[:3]) & target))
                    hits[name].append(hit)
                    item["modes"][name] = hit
                items.append(item)
        lib.Session.kw["bind"].dispose()
    rows = [[name, len(h), pct(np.mean([a for a, _ in h])), pct(np.mean([b for _, b in h]))]
            for name, h in hits.items() if h]
    table = Table(f"Retrieval on FairytaleQA train ({args.stories} stories): the passage holding the answer",
                  ["system", "n", "top-1", "top-3"], rows)
    return {"command": "retrieval", "items": items, "tables": [table], "seconds": time.perf_counter() - t0}
