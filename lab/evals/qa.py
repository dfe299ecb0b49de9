"""FairytaleQA (val): free-form answers about fairy tales, scored with ROUGE-L F1 against the
reference answer(s), the best of them.

Systems: the full pipeline (re-reading the cited passages on top of the memory; fused and bm25
retrieval), the memory alone (re-reading off, as in the paper) and the base model given the first
8K tokens of the story (its native window; most of these stories fit whole).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict

import numpy as np

from infini_reader.app.core.answers import RetrievalSettings

from .common import (
    BASE_TOKENS,
    DATA,
    Table,
    answers_sharing_prefix,
    ask_once,
    base_engine,
    cached_generation,
    head_text,
    ingest_text,
    load_engine,
    read_jsonl,
    rouge,
    temporary_library,
    write_json,
)

SYSTEMS = ("hybrid", "fused", "bm25", "memory-only", "base")


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=30, help="questions (default 30)")
    p.add_argument("--per-story", type=int, default=5, help="questions taken from each story (default 5)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="of " + ", ".join(SYSTEMS))
    p.add_argument("--base-tokens", type=int, default=BASE_TOKENS, help="text the base model reads (tokens)")
    p.add_argument("--max-chars", type=int, help="cut each story to this many characters (smoke tests)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--data", default=str(DATA / "fairytaleqa" / "val.jsonl.xz"))
    p.add_argument("--seed", type=int, default=0)


def pick(stories: list[dict], n: int, per_story: int, seed: int) -> list[tuple[dict, list[dict]]]:
    """Stories in a seeded order, `per_story` questions of each spread over the story, until n."""
    order = list(range(len(stories)))
    random.Random(seed).shuffle(order)
    out, left = [], n
    for i in order:
        if left <= 0:
            break
        qs = stories[i]["questions"]
        k = min(per_story, len(qs), left)
        chosen = [qs[int(j * len(qs) / k)] for j in range(k)]
        out.append((stories[i], chosen))
        left -= k
    return out


def title_of(story: dict) -> str:
    return story["story"].replace("-", " ").title()


def base_prompt(title: str, text: str, question: str) -> list[dict]:
    return [
        {
            "role": "system",
            "content": f"You answer questions about the story “{title}”. Answer from the text, briefly and plainly.",
        },
        {"role": "user", "content": f"The story:\n\n{text.strip()}\n\nQuestion: {question}"},
    ]


def run(args) -> dict:
    t_start = time.perf_counter()
    e = load_engine(args.model, args.device, adapter=args.adapter)
    systems = [s for s in args.systems.split(",") if s]
    base = base_engine(e) if "base" in systems else None
    stories = list(read_jsonl(args.data))
    result = {
        "command": "qa",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "retrieval_defaults": asdict(RetrievalSettings()),
        "stories": [],
        "items": [],
    }
    for story, questions in pick(stories, args.n, args.per_story, args.seed):
        text = story["text"][: args.max_chars] if args.max_chars else story["text"]
        title = title_of(story)
        info = {"story": story["story"], "chars": len(text), "questions": len(questions)}
        items = [
            {
                "story": story["story"],
                "question": q["question"],
                "references": [r for r in (q.get("answer"), q.get("answer2")) if r],
                "answers": {},
            }
            for q in questions
        ]
        with temporary_library() as (lib, folder):
            doc_id, info["ingest_s"] = ingest_text(lib, e, folder, title, text)
            t0 = time.perf_counter()
            with cached_generation(e):
                for it in items:
                    for system in systems:
                        if system in ("hybrid", "fused", "bm25", "memory"):
                            it["answers"][system], _ = ask_once(
                                lib, e, doc_id, it["question"], system, True, args.max_new_tokens
                            )
                        elif system == "memory-only":
                            it["answers"][system], _ = ask_once(
                                lib, e, doc_id, it["question"], "fused", False, args.max_new_tokens
                            )
            info["answer_s"] = time.perf_counter() - t0
        if base is not None:
            t0 = time.perf_counter()
            head = head_text(e, text, args.base_tokens)
            info["base_whole_story"] = head == text
            prompts = [base_prompt(title, head, it["question"]) for it in items]
            for it, answer in zip(items, answers_sharing_prefix(base, prompts, args.max_new_tokens)):
                it["answers"]["base"] = answer
            info["base_s"] = time.perf_counter() - t0
        for it in items:
            it["rougeL"] = {s: rouge(a, it["references"])["rougeL"]["max"] for s, a in it["answers"].items()}
        result["stories"].append(info)
        result["items"].extend(items)
        result["tables"] = tables(result, systems, args)
        result["seconds"] = time.perf_counter() - t_start
        write_json(args.out, result)
    return result


LABELS = {
    "hybrid": "pipeline: re-read sentences, BM25 + embeddings + memory (the default)",
    "fused": "pipeline: memory + re-reading, fused retrieval",
    "bm25": "pipeline: memory + re-reading, bm25 retrieval",
    "memory": "pipeline: memory + re-reading, memory retrieval",
    "memory-only": "memory only, re-reading off (paper-pure)",
}


def tables(result: dict, systems: list[str], args) -> list[Table]:
    items = result["items"]
    whole = sum(s.get("base_whole_story", False) for s in result["stories"])
    rows = []
    for s in systems:
        vals = np.array([it["rougeL"][s] for it in items if s in it["rougeL"]])
        if not len(vals):
            continue
        label = LABELS.get(s) or (
            f"base model, first {args.base_tokens} tokens of the story "
            f"(whole story for {whole} of {len(result['stories'])})"
        )
        se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0
        rows.append([label, len(vals), f"{100 * vals.mean():.1f} ± {100 * se:.1f}"])
    return [
        Table(
            f"FairytaleQA val: ROUGE-L F1 × 100 (best of the references; ± standard error), "
            f"{len(items)} questions from {len(result['stories'])} stories",
            ["system", "n", "ROUGE-L"],
            rows,
        )
    ]
