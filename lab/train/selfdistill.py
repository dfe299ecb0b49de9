"""`python -m lab.train.selfdistill --out FILE.jsonl`: ordinary short instructions answered by the
base model itself, the `chat` task's data. Training on the base model's own answers (self-
distillation) keeps its everyday chat ability while the other tasks change it.

The instructions are built from book text (no evaluation prompt is among them): explain, continue,
summarise or rephrase a sentence or a paragraph of a Gutenberg book (train-001, not the books the
other tasks use), answer a FairytaleQA train question about that story without the story, and
questions the base model writes itself when asked for a question on a topic.

`--own-questions P` makes a share P of the items everyday questions the base model writes itself
(asked, with sampling, for one short question about a topic of general knowledge) and then answers
greedily: short factual questions, which the mixture above lacks and which passkey and QA training
turn into digits or an echo of the question ("What is the first month of the year?" → "… is 14368.").
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import sys
from pathlib import Path

from .data import read_jsonl
from .trainer import SHARED_DATA
from infini_reader.app.core import models

TEMPLATES = [
    "Explain in simple words what this sentence means: “{s}”",
    "Continue this text with two sentences: “{p}”",
    "Summarise this passage in one sentence: “{p}”",
    "Rewrite this sentence in modern English: “{s}”",
    "What is the mood of this passage? “{p}”",
    "Give a title to this passage: “{p}”",
]
TOPICS = ["history", "science", "geography", "cooking", "animals", "music", "sports", "mathematics", "health",
          "art", "weather", "space", "plants", "languages", "travel", "money", "computers", "the sea"]
# for --own-questions: general knowledge a small instruction-tuned model answers
KNOWLEDGE = TOPICS + [
    "countries and capitals", "the human body", "food", "colours", "numbers", "arithmetic", "time and calendars",
    "famous writers", "famous painters", "inventions", "rivers and mountains", "oceans", "insects", "birds",
    "fish", "the solar system", "chemistry", "physics", "electricity", "water", "trees", "fruit",
    "vegetables", "holidays", "school", "transport", "houses", "clothes", "jobs", "the weather in winter",
    "farm animals", "wild animals", "dinosaurs", "the moon", "volcanoes", "deserts", "the Olympic games",
    "musical instruments", "spelling", "grammar", "words and their opposites", "shapes", "measurements",
    "famous buildings", "world history", "ancient Egypt", "the Roman Empire", "medicine", "sleep", "the internet",
]
OWN_QUESTION = "Ask me one simple quiz question about {topic}. Write only the question."
# shown to the base model as earlier turns, so that it writes a question in that form
OWN_SHOTS = [("transport", "How many wheels does a bicycle have?"), ("chemistry", "Which metal is liquid at room temperature?"),
             ("geography", "What is the longest river in Africa?")]


def first_question(text: str) -> str | None:
    """The first line of a generated text that is a question (ends with "?"), without list marks or
    quotes; None when there is none."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|Q(?:uestion)?\s*\d*\s*:)\s*", "", line).strip().strip('"“”')
        if line.endswith("?") and 10 <= len(line) <= 160:
            return line
    return None


def norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_excluded(question: str, excluded: list[str], ratio: float = 0.9) -> bool:
    """Whether a question is one of `excluded` (an evaluation's prompts) or nearly: the same words, or
    a difflib similarity of at least `ratio` ("Where is the capital of France?" for "What is …")."""
    q = norm(question)
    return any(q == norm(x) or difflib.SequenceMatcher(None, q, norm(x)).ratio() >= ratio for x in excluded)


def prompts(n: int, seed: int, data: Path, own_questions: float = 0.0) -> list[str | tuple[str, str]]:
    """The instructions, in order; an own-question item is ("own", the request for a question)."""
    rng = random.Random(seed)
    sentences, paras = [], []
    for book in read_jsonl(data / "gutenberg" / "train-001.jsonl.xz", 30):
        t = book["text"]
        mid = len(t) // 2
        for p in t[mid : mid + 60_000].split("\n\n"):
            p = " ".join(p.split())
            if 200 < len(p) < 600:
                paras.append(p)
                sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", p) if 40 < len(s) < 200)
    stories = list(read_jsonl(data / "fairytaleqa" / "train.jsonl.xz"))
    out = []
    while len(out) < n:
        if own_questions and rng.random() < own_questions:
            out.append(("own", OWN_QUESTION.format(topic=rng.choice(KNOWLEDGE))))
            continue
        kind = rng.random()
        if kind < 0.6:
            out.append(rng.choice(TEMPLATES).format(s=rng.choice(sentences), p=rng.choice(paras)))
        elif kind < 0.8:
            story = rng.choice(stories)
            out.append(rng.choice(story["questions"])["question"])
        else:
            out.append(f"Ask me one short question about {rng.choice(TOPICS)}, then answer it.")
    return out


def main(argv: list[str] | None = None) -> int:
    from infini_reader import engine

    p = argparse.ArgumentParser(prog="python -m lab.train.selfdistill", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--model", default="builtin")
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own-questions", type=float, default=0.0,
                   help="share of questions the base model writes itself on a general-knowledge topic (default 0)")
    p.add_argument("--exclude", help="a file of prompts, one a line (an evaluation's), that no own question may be")
    args = p.parse_args(argv)
    e = models.load_model(args.model, adapter=None)  # the base model's own answers
    excluded = Path(args.exclude).read_text(encoding="utf-8").splitlines() if args.exclude else []
    out = Path(args.out)
    kept = out.read_text(encoding="utf-8").splitlines() if out.exists() else []  # resumable
    done = len(kept)
    seen = {json.loads(line)["prompt"].lower() for line in kept}  # questions asked, resumed ones too
    shots = [m for topic, q in OWN_SHOTS for m in ({"role": "user", "content": OWN_QUESTION.format(topic=topic)},
                                                    {"role": "assistant", "content": q})]
    with open(out, "a", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts(args.n, args.seed, Path(args.data), args.own_questions)):
            if i < done:
                continue
            if isinstance(prompt, tuple):  # the base model writes the question, sampled, then answers it
                asked = "".join(e.generate(shots + [{"role": "user", "content": prompt[1]}], e.new_memory(),
                                           max_new_tokens=40, temperature=0.7, seed=args.seed * 100_003 + i))
                question = first_question(asked)
                # no question, one already asked, or an excluded one: the request itself is the instruction
                # (the file keeps one line per item, so that it resumes where it stopped)
                ok = question and question.lower() not in seen and not is_excluded(question, excluded)
                prompt = question if ok else prompt[1]
                seen.add(prompt.lower())
            answer = "".join(e.generate(prompt, e.new_memory(), max_new_tokens=args.max_new_tokens,
                                        repetition_penalty=1.1)).strip()
            f.write(json.dumps({"prompt": prompt, "answer": answer}, ensure_ascii=False) + "\n")
            f.flush()
            print(f"{i + 1}/{args.n}", end="\r", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
