"""Training examples, each a function of (seed, index) alone, so that a resumed run sees exactly the
examples it would have seen.

Every example is one sequence: some whole segments of text that reach the model only through its
memory, then a last segment that ends with what is scored. Tasks:

- `lm`: consecutive text of one book, every token scored (long-document language modelling);
- `passkey`: the paper's format (filler sentences, "The pass key is NNNNN. Remember it. NNNNN is
  the pass key.", more filler, "What is the pass key? The pass key is"), the key at a random depth
  of the segments before the last; half of the examples use book text as the filler; only the
  key's digits and the full stop after them are scored;
- `needle`: a bAbI single-supporting fact (qa1, train split) placed in book text; the question is
  asked in the chat format in the last segment; the answer is scored;
- `qa`: FairytaleQA (train split) questions in the application's own answer format, either with
  the excerpt that holds the answer in the local window (as `infini ask` re-reads) or with the
  story only in the memory (paper-pure mode); the answer is scored;
- `chat`: ordinary short instructions answered by the base model itself (`lab.train.selfdistill`
  writes them), in one short segment: self-distillation that keeps the everyday chat ability while
  the other tasks change the model;
- `text`: half a segment of book text on its own (no memory), every token scored: with a teacher
  (`TrainConfig.teacher`) the model is held to the teacher's next-token distribution on plain text.
"""

from __future__ import annotations

import json
import lzma
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                 "I will quiz you about the important information there.")
PASSKEY_QUESTION = "What is the pass key? The pass key is"
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
NEEDLE_SPAN = 32  # tokens from where a needle begins that count as the needle (a passkey sentence: 25)
TASKS = ("lm", "passkey", "needle", "qa", "chat", "passkey_far", "text")
DISTILLED = ("chat", "text")  # no memory: with a teacher, trained toward its distribution
QA_SYSTEM = "You answer questions about the book “{title}”. Answer from the excerpts, briefly and plainly."
QA_SYSTEM_MEMORY = "You answer questions about the book “{title}”, which you have read. Answer briefly and plainly."


@dataclass
class Example:
    task: str
    ids: list[int]  # model input, a multiple of the segment length plus the last segment
    targets: list[int]  # the next token where scored, -100 elsewhere
    memory_segments: int  # whole segments before the last
    needle_at: int = -1  # where the passkey or fact begins in `ids` (-1: none)
    # {segment index: r}: a filler segment that stands for r identical ones (`passkey_far`; the
    # trainer writes it r times, InfiniTransformer.forward_train `repeat`)
    repeat: dict[int, int] = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return sum(t != -100 for t in self.targets)

    def filler_segments(self, L: int, needle_len: int = NEEDLE_SPAN, tail: int = 0) -> set[int]:
        """Segments of length L that are neither scored nor touch the needle's first `needle_len`
        tokens nor are among the `tail` segments just before the first scored one: the ones
        truncated back-propagation may run without gradient. `tail` lets the text right before the
        question (a story told before it is asked about) learn what to write; a segment that stands
        for repeated copies (`repeat`) stays without gradient whatever `tail` says, as its write
        may only be multiplied as a constant."""
        keep = {i // L for i, t in enumerate(self.targets) if t != -100}
        first = min(keep, default=0)
        keep |= set(range(max(0, first - tail), first)) - set(self.repeat)
        if self.needle_at >= 0:
            keep |= set(range(self.needle_at // L, (self.needle_at + needle_len - 1) // L + 1))
        return set(range(-(-len(self.ids) // L))) - keep


def read_jsonl(path: Path, limit: int | None = None):
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                return
            if line.strip():
                yield json.loads(line)


def babi_qa1(path: Path, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(fact, question, answer) of bAbI qa1, single supporting fact: ("Mary moved to the
    bathroom.", "Where is Mary?", "bathroom"), in file order, at most `limit`."""
    out, lines, task = [], {}, ""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("###"):
                task = line
                continue
            if "qa1_" not in task or not line.strip():
                continue
            num, _, rest = line.strip().partition(" ")
            if num == "1":
                lines = {}
            if "\t" in rest:
                q, answer, support = (x.strip() for x in rest.split("\t"))
                out.append((lines[support.split()[0]], q, answer))
                if limit is not None and len(out) >= limit:
                    break
            else:
                lines[num] = rest.strip()
    return out


def passkey_ids(tok, key: str, total: int, depth: float, filler_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """The paper's passkey haystack of about `total` tokens with the key at `depth` (0 = start,
    1 = end): (haystack ids, question ids). With `filler_ids` (book text) instead of the repeated
    sentences."""
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    intro, needle, question = enc(PASSKEY_INTRO), enc(PASSKEY_NEEDLE.format(key=key)), \
        enc(" " + PASSKEY_QUESTION)
    room = max(0, total - len(intro) - len(needle))
    if filler_ids is None:
        unit = enc(" " + FILLER)
        filler = (unit * (room // len(unit) + 1))[:room]
    else:
        filler = (filler_ids * (room // max(1, len(filler_ids)) + 1))[:room]
    at = int(round(depth * room))
    if filler_ids is None:  # keep the repeated sentences whole
        unit_len = len(enc(" " + FILLER))
        at = at // unit_len * unit_len
    return intro + filler[:at] + needle + filler[at:], question


def find(seq: list[int], part: list[int]) -> int:
    """Index of the first occurrence of `part` in `seq`, -1 if absent."""
    first = part[0]
    for i in range(len(seq) - len(part) + 1):
        if seq[i] == first and seq[i : i + len(part)] == part:
            return i
    return -1


class TrainingData:
    """A mixture of the tasks above, read from `data_dir` (the project's ../shared/data)."""

    def __init__(self, tokenizer, chat, segment_length: int, data_dir: Path, mix: dict[str, float],
                 memory_segments: tuple[int, int] = (1, 3), seed: int = 0, books: int = 40,
                 chat_file: str | Path | None = None, far_tokens: tuple[int, int] = (32_768, 1_048_576)):
        self.tok, self.chat, self.L = tokenizer, chat, segment_length
        self.far_tokens = far_tokens
        self.seed, self.min_seg, self.max_seg = seed, *memory_segments
        self.tasks = [t for t in TASKS if mix.get(t, 0) > 0]
        if not self.tasks:
            raise ValueError(f"no task in the mixture; choose among {', '.join(TASKS)}")
        self.weights = [mix[t] for t in self.tasks]
        data_dir = Path(data_dir)
        # Book text for language modelling and as filler: a stretch from the middle of each book.
        self.books = []
        for b in read_jsonl(data_dir / "gutenberg" / "train-000.jsonl.xz", books):
            t = b["text"]
            mid = len(t) // 2
            self.books.append(t[max(0, mid - 150_000) : mid + 150_000])
        self.babi = babi_qa1(data_dir / "babi" / "en-10k-train.txt.xz") if "needle" in self.tasks else []
        self.stories = list(read_jsonl(data_dir / "fairytaleqa" / "train.jsonl.xz")) if "qa" in self.tasks else []
        self.chat_items = []
        if "chat" in self.tasks:
            if not chat_file:
                raise ValueError("the chat task needs chat_file (python -m lab.train.selfdistill writes one)")
            with open(chat_file, encoding="utf-8") as f:
                self.chat_items = [json.loads(line) for line in f if line.strip()]
        stop = chat.stop_token_ids[0] if chat is not None and chat.stop_token_ids else None
        self.end = [stop] if stop is not None else []

    # ---- pieces ----

    def enc(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def book_tokens(self, rng: random.Random, n: int) -> list[int]:
        text = self.books[rng.randrange(len(self.books))]
        chars = int(n * 6) + 1000
        start = rng.randrange(max(1, len(text) - chars))
        start = text.find(" ", start) + 1
        ids = self.enc(text[start : start + chars])
        while len(ids) < n:  # a short book: repeat it
            ids = ids + ids
        return ids[:n]

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.enc(self.chat.render(messages, add_generation_prompt=True))

    def _assemble(self, task: str, haystack: list[int], prompt: list[int], answer: list[int],
                  needle_at: int = -1) -> Example:
        """haystack (whole segments) + prompt + answer: inputs and targets, only `answer` scored
        (every token when `answer` is empty and the task is lm)."""
        seq = haystack + prompt + answer
        score_from = len(haystack) + len(prompt) if answer else 1
        ids = seq[:-1]
        targets = [t if i + 1 >= score_from else -100 for i, t in enumerate(seq[1:])]
        return Example(task, ids, targets, len(haystack) // self.L, needle_at)

    # ---- tasks ----

    def example(self, index: int) -> Example:
        rng = random.Random(self.seed * 1_000_003 + index)
        task = rng.choices(self.tasks, self.weights)[0]
        n = rng.randint(self.min_seg, self.max_seg)
        return getattr(self, "_" + task)(rng, n, rng)

    def batch(self, index: int, size: int) -> list[Example]:
        """`size` examples that can run side by side (`collate`): one task and number of segments
        drawn for all, and the draws that place things among the segments (the passkey's depth, a
        far haystack's length and the key's segment in it, where a story is told) shared; the rest
        (books, keys, questions, lengths inside the last segment) drawn for each. A function of
        (seed, index, size) alone; not the examples `example()` gives (a run keeps one batch size)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        task = rng.choices(self.tasks, self.weights)[0]
        n = rng.randint(self.min_seg, self.max_seg)
        layout = rng.getstate()
        out = []
        for j in range(size):
            lay = random.Random()
            lay.setstate(layout)  # every row draws the same layout
            row = random.Random((self.seed * 1_000_003 + index) * 1_024 + j + 1)
            out.append(getattr(self, "_" + task)(row, n, lay))
        return out

    # Each task takes `rng` for what is drawn per example and `lay` for what places things among the
    # segments (the same object when examples come one by one).

    def _lm(self, rng, n, lay) -> Example:
        ids = self.book_tokens(rng, n * self.L + lay.randint(self.L // 4, self.L) + 1)  # one length in a batch: no pad
        return self._assemble("lm", ids[: n * self.L], ids[n * self.L :], [])

    def _text(self, rng, n, lay) -> Example:
        ids = self.book_tokens(rng, self.L // 2 + 1)
        return self._assemble("text", [], ids, [])

    def _passkey(self, rng, n, lay) -> Example:
        key = str(rng.randint(10_000, 99_999))
        filler = self.book_tokens(rng, n * self.L) if rng.random() < 0.5 else None
        hay, question = passkey_ids(self.tok, key, n * self.L, lay.random(), filler)
        hay = hay[: n * self.L]
        if len(hay) < n * self.L:
            hay = hay + self.enc(" " + FILLER) * self.L
            hay = hay[: n * self.L]
        # the question after a little more filler, in a segment of its own
        tail = self.enc(" " + FILLER) * rng.randint(0, 3)
        # the key and the full stop after it, as the needle sentence has it: the model learns to stop
        return self._assemble("passkey", hay, tail + question, self.enc(f" {key}."), find(hay, self.enc(" The pass key is")))

    def _passkey_far(self, rng, n, lay) -> Example:
        """A passkey in a haystack of the paper's filler `far_tokens` long (log-uniform), built of a
        few real segments: the first (the introduction), up to two of filler before the key's
        segment and up to two after it, each of those standing for its share of the filler segments
        of the whole haystack (`repeat`). Trained with `truncate`, at the cost of at most seven segments."""
        key = str(rng.randint(10_000, 99_999))
        L, (lo, hi) = self.L, self.far_tokens
        total = max(2, int(math.exp(lay.uniform(math.log(lo), math.log(hi)))) // L)  # the haystack's segments
        kv = min(total - 1, int(lay.random() * total))  # the key's segment in it
        before, after = max(0, kv - 1), total - 1 - kv  # pure filler segments around it
        a, b = min(2, before), min(2, after)
        ks = 1 + a if kv > 0 else 0  # the key's segment in the example
        n_real = ks + 1 + b
        intro, unit = self.enc(PASSKEY_INTRO), self.enc(" " + FILLER)
        needle = self.enc(PASSKEY_NEEDLE.format(key=key))
        # the needle at a sentence boundary of the filler, wholly inside the key's segment
        lo_at, hi_at = max(ks * L, len(intro)), (ks + 1) * L - max(len(needle), NEEDLE_SPAN)
        at = len(intro) + (rng.randrange(lo_at, hi_at) - len(intro)) // len(unit) * len(unit)
        if at < lo_at:
            at += len(unit)
        fill = unit * (n_real * L // len(unit) + 2)
        hay = (intro + fill[: at - len(intro)] + needle + fill[at - len(intro):])[: n_real * L]
        repeat = {}
        for first, count, k in ((1, before, a), (ks + 1, after, b)):
            for j in range(k):  # count filler segments shared among k real ones
                repeat[first + j] = count // k + (1 if j < count % k else 0)
        tail = unit * rng.randint(0, 3)
        ex = self._assemble("passkey_far", hay, tail + self.enc(" " + PASSKEY_QUESTION), self.enc(f" {key}."), at)
        ex.repeat = repeat
        return ex

    def _needle(self, rng, n, lay) -> Example:
        fact, question, answer = self.babi[rng.randrange(len(self.babi))]
        fact_ids = self.enc(" " + fact)
        hay = self.book_tokens(rng, n * self.L - len(fact_ids))
        # in a batch, the fact at the same depth in every row (so the same segments can run without
        # gradient); one by one, the draw it always was
        at = int(lay.random() * len(hay)) if lay is not rng else rng.randrange(len(hay))
        hay = hay[:at] + fact_ids + hay[at:]
        prompt = self.chat_ids([{"role": "user", "content": question}])
        return self._assemble("needle", hay, prompt, self.enc(f"In the {answer}.") + self.end, at)

    def _chat(self, rng, n, lay) -> Example:
        item = self.chat_items[rng.randrange(len(self.chat_items))]
        prompt = self.chat_ids([{"role": "user", "content": item["prompt"]}])
        answer = self.enc(item["answer"])
        complete = len(answer) < 60  # an answer cut at the generation limit does not end the turn
        answer = answer[: self.L - len(prompt) - 1] + (self.end if complete else [])
        return self._assemble("chat", [], prompt[: self.L // 2], answer)

    def _qa(self, rng, n, lay) -> Example:
        story = self.stories[rng.randrange(len(self.stories))]
        q = story["questions"][rng.randrange(len(story["questions"]))]
        title = story["story"].replace("-", " ").title()
        a = q["answer"].strip()
        answer = self.enc(a[:1].upper() + a[1:] + ("" if a[-1:] in ".!?" else ".")) + self.end
        text = story["text"]
        if lay.random() < 0.5:  # the excerpt in the local window, as `infini ask` re-reads it
            excerpt = _excerpt(text, q["answer"], q["question"], 2000)
            user = f"Excerpts from the book:\n\n{excerpt}\n\nQuestion: {q['question']}"
            prompt = self.chat_ids([{"role": "system", "content": QA_SYSTEM.format(title=title)},
                                    {"role": "user", "content": user}])
            hay = self.book_tokens(rng, (n - 1) * self.L) if n > 1 else []
            if len(prompt) + len(answer) > self.L:
                prompt = prompt[-(self.L - len(answer)) :]
            return self._assemble("qa", hay, prompt, answer)
        # the story only in the memory: book text before it so that it ends with a segment
        story_ids = self.enc(text)[: n * self.L]
        hay = self.book_tokens(rng, n * self.L - len(story_ids)) + story_ids if len(story_ids) < n * self.L else story_ids
        prompt = self.chat_ids([{"role": "system", "content": QA_SYSTEM_MEMORY.format(title=title)},
                                {"role": "user", "content": q["question"]}])
        return self._assemble("qa", hay, prompt, answer)


@dataclass
class Batch:
    """Examples side by side: ids and targets padded to one length (the pad's targets -100), the
    segments that may run without gradient in every row, and per-row repeat counts."""
    examples: list[Example]
    ids: list[list[int]]
    targets: list[list[int]]
    constant: set[int]
    repeat: dict[int, list[int]]


def collate(examples: list[Example], L: int, truncate: bool = False, tail: int = 0, pad: int = 0) -> Batch:
    """Stack examples whose segments line up (the same number, only the last one of different
    lengths, as `TrainingData.batch` draws them). With `truncate`, a segment runs without gradient
    only where it may in every row (`Example.filler_segments`); a segment repeated in some row must be
    one of those, and is written once in the rows that do not repeat it."""
    counts = {-(-len(ex.ids) // L) for ex in examples}
    if len(counts) != 1:
        raise ValueError(f"examples of {sorted(counts)} segments cannot run side by side")
    width = max(len(ex.ids) for ex in examples)
    ids = [ex.ids + [pad] * (width - len(ex.ids)) for ex in examples]
    targets = [ex.targets + [-100] * (width - len(ex.targets)) for ex in examples]
    constant = set.intersection(*(ex.filler_segments(L, tail=tail) for ex in examples)) if truncate else set()
    keys = set().union(*(ex.repeat for ex in examples))
    if not keys <= constant:
        raise ValueError(f"segments {sorted(keys - constant)} are repeated in one example and differentiated in another")
    repeat = {i: [ex.repeat.get(i, 1) for ex in examples] for i in sorted(keys)}
    return Batch(examples, ids, targets, constant, repeat)


def _excerpt(text: str, answer: str, question: str, chars: int) -> str:
    """About `chars` characters of `text` around the answer (or the question's words)."""
    at = text.lower().find(answer.lower().strip())
    if at < 0:
        words = {w for w in re.findall(r"\w{4,}", question.lower())}
        best, at = -1, 0
        for m in re.finditer(r"[^.!?]+[.!?]", text):
            hit = len(words & set(re.findall(r"\w{4,}", m.group().lower())))
            if hit > best:
                best, at = hit, m.start()
    a = max(0, at - chars // 2)
    a = text.rfind("\n", 0, a) + 1 if "\n" in text[max(0, a - 400) : a] else a
    return text[a : a + chars].strip()
