"""Short-context instruction following, the base model against the adapted one: the same prompts,
greedy, memory empty. Two scores, each the share of prompts passed:

- `instructions`: general questions and small tasks with a checkable answer (every listed word must
  appear in the answer, as a word); they test that training on long documents did not cost the
  model what it could already do;
- `excerpt QA`: FairytaleQA val questions with the passage that holds the answer given in the
  prompt, in the application's own answer format, scored by ROUGE-L F1 (mean) against the reference.

A difference within the noise of a 30-prompt set (one or two prompts) is no change.
"""

from __future__ import annotations

import random
import time

from lab.train.data import QA_SYSTEM, _excerpt

from .common import DATA, Table, has_key, load_engine, read_jsonl, rouge, write_json

# (prompt, words that must all appear); answers SmolLM2-135M-Instruct is expected to know.
INSTRUCTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("Which planet is the largest in our solar system?", ["Jupiter"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("Who wrote the play Romeo and Juliet?", ["Shakespeare"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What is the opposite of hot?", ["cold"]),
    ("What is the opposite of up?", ["down"]),
    ("How many legs does a spider have?", ["eight|8"]),
    ("How many days are there in a week?", ["seven|7"]),
    ("What is 2 plus 2?", ["four|4"]),
    ("What is 10 minus 3?", ["seven|7"]),
    ("What gas do plants take in from the air?", ["carbon"]),
    ("What do bees make?", ["honey"]),
    ("What is frozen water called?", ["ice"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("What is the chemical symbol for water?", ["H2O"]),
    ("Translate 'thank you' into French.", ["merci"]),
    ("Translate 'hello' into Spanish.", ["hola"]),
    ("Write the word 'cat' in capital letters.", ["CAT"]),
    ("Name a fruit that is yellow.", ["banana|lemon|pineapple|mango"]),
    ("Complete the sentence: The early bird catches the", ["worm"]),
    ("What is the first month of the year?", ["January"]),
    ("What is the boiling point of water in degrees Celsius?", ["100"]),
    ("Who painted the Mona Lisa?", ["Leonardo|Vinci"]),
    ("What language is spoken in Brazil?", ["Portuguese"]),
    ("What is the tallest animal in the world?", ["giraffe"]),
]


def add_arguments(p) -> None:
    p.add_argument("--qa", type=int, default=30, help="FairytaleQA val questions (default 30)")
    p.add_argument("--baseline", default="none", help="the model compared against: none (the plain base, "
                   "default) or an adapter file")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)


def passes(answer: str, words: list[str]) -> bool:
    return all(any(has_key(answer, w) for w in alt.split("|")) for alt in words)


def qa_items(n: int, seed: int) -> list[tuple[list[dict], str]]:
    stories = list(read_jsonl(DATA / "fairytaleqa" / "val.jsonl.xz"))
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = stories[rng.randrange(len(stories))]
        q = s["questions"][rng.randrange(len(s["questions"]))]
        title = s["story"].replace("-", " ").title()
        user = f"Excerpts from the book:\n\n{_excerpt(s['text'], q['answer'], q['question'], 2000)}\n\nQuestion: {q['question']}"
        out.append(([{"role": "system", "content": QA_SYSTEM.format(title=title)}, {"role": "user", "content": user}],
                    q["answer"]))
    return out


def run(args) -> dict:
    t0 = time.perf_counter()
    qa = qa_items(args.qa, args.seed)
    systems, items = [], []
    first = "base" if args.baseline in (None, "none") else "baseline"  # the plain model, or an adapter
    for label, adapter in ((first, args.baseline), ("adapted", args.adapter)):
        e = load_engine(args.model, args.device, adapter=adapter)
        inst = []
        for prompt, words in INSTRUCTIONS:
            a = "".join(e.generate(prompt, e.new_memory(), max_new_tokens=args.max_new_tokens)).strip()
            inst.append(passes(a, words))
            items.append({"system": label, "kind": "instruction", "prompt": prompt, "answer": a, "pass": inst[-1]})
        rl = []
        for messages, ref in qa:
            a = "".join(e.generate(messages, e.new_memory(), max_new_tokens=args.max_new_tokens)).strip()
            rl.append(rouge(a, [ref])["rougeL"]["max"])
            items.append({"system": label, "kind": "qa", "question": messages[-1]["content"][-200:], "answer": a,
                          "reference": ref, "rougeL": rl[-1]})
        systems.append([f"{label} ({e.source}, {e.fingerprint[:8]})", f"{sum(inst)}/{len(inst)}",
                        f"{100 * sum(rl) / max(1, len(rl)):.1f}"])
        print(systems[-1], flush=True)
    table = Table("Short-context check: instructions passed and excerpt QA (ROUGE-L F1 ×100)",
                  ["model", "instructions", "excerpt QA"], systems)
    result = {"eval": "chat", "items": items, "tables": [table], "args": vars(args) | {"func": None},
              "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    return result
