"""SQuALITY (dev): whole-story summaries against the four human answers to "What is the plot of the
story?", ROUGE-1/2/L F1 (rouge-score, Porter stemmer; the best of the four references, and their
mean in the JSON).

Systems: the pipeline (`summarize(..., section_idx=None)`: the story read into the memory, then
summarised part by part or chapter by chapter and merged; its parts' notes written by the model from
the whole part), `extractive` (the same pipeline with extractive-first notes: each part's key
sentences chosen by embeddings, then retold by the model from those sentences alone), `pipeline-full` (the same with every part
summary written to its end, `stop_parts=False`: asked for beside `pipeline`, it shows in one run what
stopping a part early saves and that the summaries are the same), a lead baseline (the story's first
sentences, cut to the pipeline summary's length in words) and the base model given the first 8K
tokens of the story (its native window) with the pipeline's own summary prompt.
"""

from __future__ import annotations

import re
import time

import numpy as np

from infini_reader.app.core.summaries import ANSWER_TOKENS, WORD, sentences, summarize, supported

from .common import (
    BASE_TOKENS,
    DATA,
    Table,
    answers_sharing_prefix,
    base_engine,
    head_text,
    ingest_text,
    load_engine,
    read_jsonl,
    rouge,
    temporary_library,
    write_json,
)

SYSTEMS = ("pipeline", "extractive", "lead", "base")  # the default
PIPELINES = {  # summarize()'s arguments
    "pipeline": {"style": "abstractive"},
    "pipeline-full": {"style": "abstractive", "stop_parts": False},
    "extractive": {"style": "extractive"},
}
METRICS = ("rouge1", "rouge2", "rougeL")
LEAD_WORDS = 120  # the lead's length when the pipeline does not run


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=5, help="stories (default 5)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="of " + ", ".join(SYSTEMS + ("pipeline-full",)))
    p.add_argument("--base-tokens", type=int, default=BASE_TOKENS, help="text the base model reads (tokens)")
    p.add_argument("--max-chars", type=int, help="cut each story to this many characters (smoke tests)")
    p.add_argument("--segment-length", type=int, help="override the model's segment length (smoke tests)")
    p.add_argument("--data", default=str(DATA / "squality" / "dev.jsonl.xz"))


def plot_references(row: dict) -> list[str]:
    q = next(
        (q for q in row["questions"] if q.get("question_number") == 1 or "plot" in q["question_text"].lower()),
        row["questions"][0],
    )
    return [r["response_text"] for r in q["responses"]]


def title_of(doc: str) -> str:
    for line in doc.splitlines():
        line = line.strip()
        if line and not re.search(r"produced by|proofreading|pgdp|^\[", line, re.IGNORECASE):
            return line[:80]
    return "story"


_NOTES = re.compile(r"\[Transcriber'?s? Note.*?\]", re.DOTALL | re.IGNORECASE)
_SENT = re.compile(r"(?<=[.!?])[\"'”’)]*\s+")


def lead(doc: str, words: int) -> str:
    """The story's first sentences, `words` words long (producers' credits and notes left out)."""
    text = _NOTES.sub(" ", doc)
    text = "\n".join(
        x for x in text.splitlines() if not re.search(r"produced by|proofreading team|pgdp", x, re.IGNORECASE)
    )
    out: list[str] = []
    for sent in _SENT.split(" ".join(text.split())):
        out.extend(sent.split())
        if len(out) >= words:
            break
    return " ".join(out[:words])


def summary_prompt(title: str, text: str) -> list[dict]:
    """The pipeline's own prompt for a text that fits one window (app.core.summaries)."""
    what = "The whole text"
    return [
        {"role": "system", "content": f"You summarise the book “{title}” for a reader."},
        {
            "role": "user",
            "content": f"{what}:\n\n{text.strip()}\n\nSummarise {what.lower()} in a few sentences: "
            "who does what, and what happens.",
        },
    ]


def run(args) -> dict:
    t_start = time.perf_counter()
    overrides = {"segment_length": args.segment_length} if args.segment_length else {}
    e = load_engine(args.model, args.device, adapter=args.adapter, **overrides)
    systems = [s for s in args.systems.split(",") if s]
    base = base_engine(e) if "base" in systems else None
    result = {
        "command": "summary",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "stories": [],
        "items": [],
    }
    for row in list(read_jsonl(args.data))[: args.n]:
        doc = row["document"][: args.max_chars] if args.max_chars else row["document"]
        title = title_of(doc)
        refs = plot_references(row)
        item = {
            "story": row["metadata"].get("passage_id"),
            "title": title,
            "words": len(doc.split()),
            "summaries": {},
            "seconds": {},
        }
        pipelines = [s for s in PIPELINES if s in systems]
        if pipelines:
            with temporary_library() as (lib, folder):
                doc_id, item["seconds"]["ingest"] = ingest_text(lib, e, folder, title, doc)
                for s in pipelines:  # one reading; each writes every summary anew
                    t0, text = time.perf_counter(), None
                    for ev in summarize(lib, e, doc_id, None, redo=True, **PIPELINES[s]):
                        if ev.kind == "error":
                            raise RuntimeError(ev.text)
                        if ev.kind == "done":
                            text = ev.text
                    item["summaries"][s] = text or ""
                    item["seconds"][s] = time.perf_counter() - t0
        if base is not None:
            t0 = time.perf_counter()
            head = head_text(e, doc, args.base_tokens)
            item["base_whole_story"] = head == doc
            item["summaries"]["base"] = answers_sharing_prefix(base, [summary_prompt(title, head)], ANSWER_TOKENS)[0]
            item["seconds"]["base"] = time.perf_counter() - t0
        if "lead" in systems:
            k = len(item["summaries"]["pipeline"].split()) if "pipeline" in item["summaries"] else LEAD_WORDS
            item["summaries"]["lead"] = lead(doc, max(k, 1))
        item["rouge"] = {s: rouge(text, refs, METRICS) for s, text in item["summaries"].items()}
        item["faithful"] = {s: faithfulness(text, doc) for s, text in item["summaries"].items()}
        result["items"].append(item)
        result["tables"] = tables(result, systems, args)
        result["seconds"] = time.perf_counter() - t_start
        write_json(args.out, result)
    return result


def faithfulness(summary: str, source: str) -> dict[str, float]:
    """How much of a summary the story supports: the share of its sentences whose names and most
    content words are in the story (the pipeline's own check, `supported`), the share of its word
    pairs found in the story (a sentence stitched from the story's words into a new claim makes new
    pairs), and the names it uses that the story never does (invented people and places), per 100
    words."""
    words = {w.lower() for w in WORD.findall(source)}
    from infini_reader.app.core.summaries import _content

    content = _content(source)
    sents = sentences(summary)
    ok = sum(supported(x, content, words) for x in sents)
    names = {w for x in sents for w in WORD.findall(x)[1:] if w[0].isupper() and w.lower() not in words}
    n_words = max(len(summary.split()), 1)
    def pairs(text: str) -> list[tuple[str, str]]:
        w = [x.lower() for x in WORD.findall(text)]
        return list(zip(w, w[1:]))

    story_pairs = set(pairs(source))
    own = pairs(summary)
    return {"supported": ok / len(sents) if sents else 1.0,
            "pairs_in_story": sum(p in story_pairs for p in own) / len(own) if own else 1.0,
            "invented_names_per_100w": 100 * len(names) / n_words}


LABELS = {
    "pipeline": "pipeline: summarize(section_idx=None) over the memory",
    "pipeline-full": "pipeline, every part summary written to its end",
    "lead": "lead: the first sentences, as many words as the pipeline's",
    "extractive": "extractive-first: key sentences by embeddings, retold",
}


def tables(result: dict, systems: list[str], args) -> list[Table]:
    items = result["items"]
    rows = []
    for s in systems:
        its = [it for it in items if s in it["rouge"]]
        if not its:
            continue
        whole = sum(it.get("base_whole_story", False) for it in its)
        label = LABELS.get(s) or f"base model, first {args.base_tokens} tokens (whole story for {whole} of {len(its)})"
        words = np.mean([len(it["summaries"][s].split()) for it in its])
        seconds = [it["seconds"][s] for it in its if s in it["seconds"]]  # the lead takes none
        rows.append(
            [label, len(its)]
            + [f"{100 * np.mean([it['rouge'][s][m]['max'] for it in its]):.1f}" for m in METRICS]
            + [f"{words:.0f}", f"{100 * np.mean([it['faithful'][s]['supported'] for it in its]):.0f}%",
               f"{100 * np.mean([it['faithful'][s]['pairs_in_story'] for it in its]):.0f}%",
               f"{np.mean([it['faithful'][s]['invented_names_per_100w'] for it in its]):.1f}",
               f"{np.mean(seconds):.0f}" if seconds else ""]
        )
    return [
        Table(
            f"SQuALITY dev, plot question: ROUGE F1 × 100 (best of 4 references), {len(items)} stories",
            ["system", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "words", "sentences supported", "word pairs in the story",
             "invented names /100 words",
             "s/story"],
            rows,
        )
    ]
