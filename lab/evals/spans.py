"""Span answers alone: each development fact's sentence re-read first among a few sentences of a real
book, the question asked of the re-read text as `ask` asks it, the answer read out by `_span_answer`.

Retrieval is taken out (the fact's sentence is always the best match), so this measures only how the
answer is read out of the re-read sentences, for questions in the fact's words and in other words.
It runs on `needle.DEV_FACTS` (never on the reported FACTS), and optionally on FairytaleQA *train*
questions whose answer stands in their section's text. Free answers are cached on disk (`--cache`),
so that a change to the span reading alone is measured again in seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from infini_reader.app.core import answers as A

from .common import DATA, Table, has_key, load_engine, pct, read_jsonl, write_json
from .needle import DEV_FACTS


def add_arguments(p) -> None:
    p.add_argument("--books", default=str(DATA / "gutenberg" / "valid.jsonl.xz"), help="where distractors come from")
    p.add_argument("--contexts", type=int, default=1, help="distractor contexts per fact (default 1)")
    p.add_argument("--fairytale", type=int, default=0,
                   help="also this many FairytaleQA train span questions whose answer is in the text (default 0)")
    p.add_argument("--cache", default="lab/runs/span/generate-cache.json", help="free answers cached here ('' off)")
    p.add_argument("--no-embeddings", action="store_true", help="rank the distractors by words only")
    p.add_argument("--verbose", action="store_true", help="print each question, free answer and answer")
    p.add_argument("--seed", type=int, default=0)


class DiskCache:
    """`engine.generate` with its answers kept in a JSON file: greedy decoding gives the same answer
    to the same prompt, and the span reading is what is being changed."""

    def __init__(self, e, path: str):
        self.e, self.generate, self.path = e, e.generate, Path(path) if path else None
        self.store = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}
        self.last = ""

    def __call__(self, prompt, memory=None, max_new_tokens=256, **kw):
        ids = self.e.prompt_ids(prompt).cpu().numpy().tobytes()
        key = hashlib.sha1(ids + repr((max_new_tokens, sorted(kw.items()))).encode()).hexdigest()
        if memory is not None or key not in self.store:
            pieces = list(self.generate(prompt, memory, max_new_tokens=max_new_tokens, **kw))
            if memory is not None:
                self.last = "".join(pieces)
                return iter(pieces)
            self.store[key] = pieces
        self.last = "".join(self.store[key])
        return iter(self.store[key])

    def save(self):
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.store))


def book_sentences(path: str, want: int = 4000) -> list[str]:
    """Plain sentences of prose (8 to 40 words, one line) from the first books of the file."""
    out = []
    for book in read_jsonl(Path(path)):
        text = book["text"]
        for a, b in A.sentences(text, 0, len(text)):
            s = " ".join(text[a:b].split())
            if 8 <= len(s.split()) <= 40 and "\n" not in text[a:b].strip() and not re.search(r"[_\[\]*]", s):
                out.append(s)
        if len(out) >= want:
            break
    return out


def read_out(e, embed, context: list[str], target: int, question: str):
    """The answer `_span_answer` reads out when the `target` sentence of the two passages `context`
    (lists of sentences) is re-read first: (answer, the free answer it came from)."""
    text, cites, pos = "", [], 0
    fact_start = None
    for ci, passage in enumerate(context):
        start = len(text)
        for k, s in enumerate(passage):
            if ci == 0 and k == target:
                fact_start = len(text)
            text += s + " "
        text = text.rstrip() + "\n\n"
        cites.append(A.Citation(ci, None, None, None, None, start, len(text) - 2, 1.0, text[start:len(text) - 2]))
        pos += 1
    ranked = A.best_sentences(text, question, cites, embed)
    ranked.sort(key=lambda s: s.start != fact_start)  # the fact's sentence first, the others as ranked
    windows = A.reread_windows(text, ranked, cites, around=1, passages=2, max_chars=1200)
    messages = A.build_prompt(text, question, windows)
    answer = A._span_answer(e, messages, text, question, ranked, windows, list(cites), None, 32)
    return answer, messages


def fairytale_items(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(section text, question, answer) of FairytaleQA *train* span questions whose answer (2 to 6
    words) stands word for word in the section."""
    out = []
    for story in read_jsonl(DATA / "fairytaleqa" / "train.jsonl.xz"):
        for q in story["questions"]:
            ans = q["answer"].strip().rstrip(".")
            if (A.is_span_question(q["question"]) and 1 <= len(ans.split()) <= 6
                    and ans.lower() in story["text"].lower()):
                out.append((story["text"], q["question"], ans))
    random.Random(seed).shuffle(out)
    return out[:n]


def run(args) -> dict:
    t0 = time.perf_counter()
    e = load_engine(args.model, args.device, adapter=args.adapter)
    from infini_reader.app.core import embeddings

    embed = None if args.no_embeddings else embeddings.default_embedder()
    cache = DiskCache(e, args.cache)
    e.generate = cache
    rng = random.Random(args.seed)
    pool = book_sentences(args.books)
    items = []
    try:
        for fi, fact in enumerate(DEV_FACTS):
            for c in range(args.contexts):
                k, m = rng.randrange(1, len(pool) - 1), rng.randrange(0, len(pool) - 3)
                context = [[pool[k - 1], fact.text, pool[k]], pool[m : m + 3]]
                for kind, q in (("direct", fact.question), ("paraphrase", fact.paraphrase)):
                    answer, _ = read_out(e, embed, context, 1, q)
                    item = {"fact": fi, "context": c, "kind": kind, "question": q, "key": fact.key,
                            "span_question": A.is_span_question(q), "free": cache.last.strip(), "answer": answer,
                            "correct": has_key(answer, fact.key)}
                    items.append(item)
                    if args.verbose:
                        print(f"{'OK ' if item['correct'] else '-- '}{kind[:4]} {q!r}\n     free: {item['free']!r}"
                              f"\n     span: {answer!r}", flush=True)
        fairy = []
        for text, q, ref in fairytale_items(args.fairytale, args.seed):
            sents = [text[a:b] for a, b in A.sentences(text, 0, len(text))]
            refw = set(A._words(ref))
            # the sentence that holds the answer, re-read first with its neighbours
            t = next(i for i, s in enumerate(sents) if ref.lower() in " ".join(s.split()).lower()) \
                if any(ref.lower() in " ".join(s.split()).lower() for s in sents) else None
            if t is None:
                continue
            lo = max(0, t - 1)
            context = [[" ".join(s.split()) for s in sents[lo : t + 2]], rng.sample(pool, 3)]
            answer, _ = read_out(e, embed, context, t - lo, q)
            aw = set(A._words(answer))
            fairy.append({"question": q, "reference": ref, "free": cache.last.strip(), "answer": answer,
                          "contains": ref.lower() in answer.lower(),
                          "overlap": len(aw & refw) / max(1, len(refw)),
                          "precision": len(aw & refw) / max(1, len(aw))})
            if args.verbose:
                print(f"{'OK ' if fairy[-1]['contains'] else '-- '}fairy {q!r} ref {ref!r}\n     free: "
                      f"{fairy[-1]['free']!r}\n     span: {answer!r}", flush=True)
    finally:
        cache.save()
    rows = []
    for kind in ("direct", "paraphrase"):
        its = [it for it in items if it["kind"] == kind]
        rows.append([kind, len(its), pct(np.mean([it["correct"] for it in its])),
                     pct(np.mean([it["span_question"] for it in its]))])
    tables = [Table("Span answers on the development facts (fact's sentence re-read first)",
                    ["questions", "n", "answer has the key", "span question"], rows)]
    if fairy:
        tables.append(Table("FairytaleQA train span questions (answer's sentence re-read first)",
                            ["n", "answer contains the reference", "reference words in the answer",
                             "answer words in the reference"],
                            [[len(fairy), pct(np.mean([f["contains"] for f in fairy])),
                              pct(np.mean([f["overlap"] for f in fairy])),
                              pct(np.mean([f["precision"] for f in fairy]))]]))
    result = {"command": "spans", "settings": {k: v for k, v in vars(args).items() if k != "func"},
              "items": items, "fairytale": fairy, "tables": tables, "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    return result
