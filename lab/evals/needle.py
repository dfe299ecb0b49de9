"""Needle in a book: facts planted at chosen depths of long books, then asked about.

One book per length holds all the facts of that length (each distinct, each at its own depth), so a
length costs one reading. Per question and retrieval mode (bm25, memory, fused): whether the top
citation and the top three hold the fact, whether the fact's segment is among the cited ones, and
whether the answer names the fact's key word. The base model, reading only the book's last pages
(its native window, the memory shut), answers the same questions. Paraphrased questions, which share
few words with the fact, are reported apart. The memory-attribution variants are scored on the same
questions: the rank of the fact's segment among all segments.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from infini_reader.app.core.answers import RetrievalSettings, find_passages
from infini_reader.app.core.segments import plan_segments
from infini_reader.engine.attribution import key_mass, query_features, segment_scores

from .common import (
    BASE_TOKENS,
    DATA,
    Table,
    answers_sharing_prefix,
    ask_once,
    base_engine,
    cached_generation,
    has_key,
    ingest_text,
    key_sums_per_head,
    load_engine,
    parse_tokens,
    pct,
    read_jsonl,
    segment_starts,
    tail_text,
    temporary_library,
    token_label,
    write_json,
)

MODES = ("hybrid", "embeddings", "bm25", "memory", "fused")  # hybrid: BM25 + embeddings + memory, the default


@dataclass
class Fact:
    text: str  # the sentence planted in the book
    question: str  # asked with the fact's own words
    paraphrase: str | None  # the same question in other words: lexical matching is weak
    key: str  # the word a right answer contains


# Invented, so that no book holds them and the model cannot know them; each question's paraphrase
# avoids the fact's distinctive words.
FACTS = [
    Fact(
        "The secret ingredient of Captain Pollard's stew is cardamom.",
        "What is the secret ingredient of Captain Pollard's stew?",
        "Which spice did the sea captain hide in his soup dish?",
        "cardamom",
    ),
    Fact(
        "The password to Professor Quillon's vault is marigold.",
        "What is the password to Professor Quillon's vault?",
        "Which word opens the scholar's strongroom?",
        "marigold",
    ),
    Fact(
        "Miss Ottoline Vance keeps her emerald necklace inside a hollow violin.",
        "Where does Miss Ottoline Vance keep her emerald necklace?",
        "In what hiding place did the lady store her green jewels?",
        "violin",
    ),
    Fact(
        "The lighthouse keeper Bartholomew Crane owns a parrot named Jupiter.",
        "What is the name of Bartholomew Crane's parrot?",
        "What is the talking bird of the man who tends the coastal beacon called?",
        "Jupiter",
    ),
    Fact(
        "The old clockmaker Anselm Ferro was born in the town of Zellmoor.",
        "In which town was the clockmaker Anselm Ferro born?",
        "Where does the elderly watch repairer come from?",
        "Zellmoor",
    ),
    Fact(
        "The treasure of the Brackwater family is buried beneath the crooked willow.",
        "Where is the treasure of the Brackwater family buried?",
        "Under what tree did that household hide its riches?",
        "willow",
    ),
    Fact(
        "Doctor Ignatius Thorne's favourite colour is turquoise.",
        "What is Doctor Ignatius Thorne's favourite colour?",
        "Which hue does the physician like best?",
        "turquoise",
    ),
    Fact(
        "The ship Halcyon Dawn carried forty barrels of molasses.",
        "What did the ship Halcyon Dawn carry in its forty barrels?",
        "What sweet syrup was loaded onto the vessel?",
        "molasses",
    ),
    Fact(
        "Lady Penrose hid the stolen letters in a tin of peppermints.",
        "Where did Lady Penrose hide the stolen letters?",
        "In which container did the noblewoman conceal the pilfered correspondence?",
        "peppermint",
    ),
    Fact(
        "The magic word that wakes the stone giant is Thimbleroot.",
        "What is the magic word that wakes the stone giant?",
        "Which spell rouses the rock colossus from its sleep?",
        "Thimbleroot",
    ),
    Fact(
        "Inspector Lemuel Grady's dog is called Biscuit.",
        "What is Inspector Lemuel Grady's dog called?",
        "What name does the detective's hound answer to?",
        "Biscuit",
    ),
    Fact(
        "The annual fair of Dunmore Vale is always held in October.",
        "In which month is the annual fair of Dunmore Vale held?",
        "When does the yearly market in that valley take place?",
        "October",
    ),
]

# A development set for answer extraction (lab.evals spans, `needle --facts dev`): the same shape
# as FACTS, other people, things and answer types (who, where, when, how many/old, which/what +
# noun, what is X called). Methods are tuned on these, never on FACTS or FairytaleQA val.
DEV_FACTS = [
    Fact(
        "The lighthouse on Gull Rock was built by the engineer Cornelius Drabble.",
        "Who built the lighthouse on Gull Rock?",
        "Who raised the warning tower on the seabird islet?",
        "Drabble",
    ),
    Fact(
        "The explorer Tobias Wren spent his final years in the village of Karndale.",
        "In which village did the explorer Tobias Wren spend his final years?",
        "Where did the old adventurer live out his last days?",
        "Karndale",
    ),
    Fact(
        "The stone bridge over the river Esk was finished in the year 1743.",
        "In what year was the stone bridge over the river Esk finished?",
        "When was the crossing over that stream completed?",
        "1743",
    ),
    Fact(
        "Farmer Josiah Penhallow kept exactly seventeen goats on his hillside.",
        "How many goats did Farmer Josiah Penhallow keep on his hillside?",
        "How many horned animals did the rancher own?",
        "seventeen",
    ),
    Fact(
        "The favourite flower of Duchess Amelia Harcourt is the bluebell.",
        "What is the favourite flower of Duchess Amelia Harcourt?",
        "Which blossom does the noble lady love most?",
        "bluebell",
    ),
    Fact(
        "The inn at the crossroads near Harlow Ford is called the Gilded Badger.",
        "What is the inn at the crossroads near Harlow Ford called?",
        "What name does the tavern where the roads meet go by?",
        "Badger",
    ),
    Fact(
        "The missing portrait of the admiral was stolen by the butler Ambrose Tindle.",
        "Who stole the missing portrait of the admiral?",
        "Which servant took the vanished painting of the naval commander?",
        "Tindle",
    ),
    Fact(
        "Young Cordelia Marsh plays the oboe in the town orchestra.",
        "Which instrument does Cordelia Marsh play in the town orchestra?",
        "What does the girl perform on in the local band?",
        "oboe",
    ),
    Fact(
        "Sergeant Rufus Kettering lost his medal in the old cistern behind the bakery.",
        "Where did Sergeant Rufus Kettering lose his medal?",
        "In what spot did the soldier misplace his decoration?",
        "cistern",
    ),
    Fact(
        "The library of Saint Aldric's abbey holds 4380 manuscripts.",
        "How many manuscripts does the library of Saint Aldric's abbey hold?",
        "How many handwritten books does the monastery keep?",
        "4380",
    ),
    Fact(
        "The favourite breakfast of the poet Lucian Abernathy is smoked herring.",
        "What is the favourite breakfast of the poet Lucian Abernathy?",
        "Which morning meal does the verse writer enjoy most?",
        "herring",
    ),
    Fact(
        "The wedding of Edmund Rooke and Clara Finch took place in March.",
        "In which month did the wedding of Edmund Rooke and Clara Finch take place?",
        "When did the young couple get married?",
        "March",
    ),
    Fact(
        "The sword of the knight Sir Aldous Grey is called Dawnbreaker.",
        "What is the sword of the knight Sir Aldous Grey called?",
        "What name was given to the warrior's blade?",
        "Dawnbreaker",
    ),
    Fact(
        "The owner of the Copperfield mill is a widow named Martha Soames.",
        "Who is the owner of the Copperfield mill?",
        "Which woman has the grain-grinding works?",
        "Soames",
    ),
    Fact(
        "The merchant Bastian Holt speaks fluent Portuguese.",
        "Which language does the merchant Bastian Holt speak?",
        "What tongue is the trader able to talk in?",
        "Portuguese",
    ),
    Fact(
        "The glassblower Pietro Galvani learned his craft in the city of Ostravel.",
        "In which city did the glassblower Pietro Galvani learn his craft?",
        "Where did the glass artisan train?",
        "Ostravel",
    ),
    Fact(
        "The hermit Silas Blackthorn was ninety-two years old when he died.",
        "How old was the hermit Silas Blackthorn when he died?",
        "At what age did the recluse pass away?",
        "ninety-two",
    ),
    Fact(
        "Miss Philippa Dorn carries a silver compass wherever she travels.",
        "What item does Miss Philippa Dorn carry wherever she travels?",
        "Which navigation tool does the young woman take on every journey?",
        "compass",
    ),
    Fact(
        "The poison in the duke's goblet was hemlock.",
        "What was the poison in the duke's goblet?",
        "Which deadly herb was put in the nobleman's cup?",
        "hemlock",
    ),
    Fact(
        "The ghost of Ravenscar Hall appears only at midnight.",
        "At what hour does the ghost of Ravenscar Hall appear?",
        "When does the spirit of that manor show itself?",
        "midnight",
    ),
    Fact(
        "It was Thaddeus Crump who first mapped the caves of Eldermoor.",
        "Who first mapped the caves of Eldermoor?",
        "Which person charted the underground caverns of that heath before anyone else?",
        "Crump",
    ),
    Fact(
        "In 1812 the chapel of Saint Wenna burned to the ground.",
        "In what year did the chapel of Saint Wenna burn to the ground?",
        "When was the little church destroyed by fire?",
        "1812",
    ),
    Fact(
        "Beneath the third oak of Marrow Lane the smugglers buried their gold.",
        "Where did the smugglers of Marrow Lane bury their gold?",
        "Under which tree did the contraband runners hide their coins?",
        "oak",
    ),
    Fact(
        "The code name of the spy Lavinia Crowe was Nightjar.",
        "What was the code name of the spy Lavinia Crowe?",
        "What secret alias did the female agent use?",
        "Nightjar",
    ),
    Fact(
        "Eleven lanterns hang above the gate of Fennick Castle.",
        "How many lanterns hang above the gate of Fennick Castle?",
        "How many lamps are suspended over the fortress entrance?",
        "eleven",
    ),
    Fact(
        "The chemist Oswin Pryce keeps a tortoise called Methuselah in his laboratory.",
        "What is the name of the tortoise of the chemist Oswin Pryce?",
        "What is the pharmacist's slow reptile known as?",
        "Methuselah",
    ),
    Fact(
        "Admiral Hestia Vane commanded the frigate Seraphine.",
        "Which frigate did Admiral Hestia Vane command?",
        "What warship was the naval officer in charge of?",
        "Seraphine",
    ),
    Fact(
        "The town of Brindlecombe is famous for its saffron.",
        "What is the town of Brindlecombe famous for?",
        "For which spice is that village renowned?",
        "saffron",
    ),
]

# Questions about nothing in particular: their key mass tells how much a segment draws *any*
# question (its bias), which the "÷ neutral" attribution variants divide out.
NEUTRAL_QUESTIONS = ("What happens in the book?", "Who is it about?", "What is this text about?")


def babi_facts(path, n: int, seed: int) -> list[Fact]:
    """Single-supporting-fact bAbI items (qa1): "Mary moved to the bathroom." / "Where is Mary?",
    one per person (a book can hold only one place for each)."""
    from lab.train.data import babi_qa1

    items = [Fact(fact, q, None, answer) for fact, q, answer in babi_qa1(path, limit=2001)]
    random.Random(seed).shuffle(items)
    out, people = [], set()
    for it in items:
        person = it.text.split()[0]
        if person not in people:
            people.add(person)
            out.append(it)
    return out[:n]


# ---- the haystack ----


def haystack(e, books: list[dict], tokens: int, used: set[int]) -> tuple[str, str]:
    """The first `tokens` tokens of the first unused book that long (or of consecutive unused books
    joined when none is): (title, text)."""
    from infini_reader.app.core.segments import tokenize_with_offsets

    need_chars = int(tokens * 4.6)  # English prose is about 4 characters a token: a margin
    pick = next((i for i, b in enumerate(books) if i not in used and len(b["text"]) >= need_chars), None)
    chosen = [pick] if pick is not None else []
    if pick is None:
        for i, b in enumerate(books):
            if i not in used:
                chosen.append(i)
                if sum(len(books[j]["text"]) for j in chosen) >= need_chars:
                    break
    used.update(chosen)
    title = " + ".join(books[i]["title"] for i in chosen)
    text = "\n\n".join(books[i]["text"].strip() for i in chosen)
    ids, starts = tokenize_with_offsets(text, e.tokenizer)
    if len(ids) > tokens:
        text = text[: int(starts[tokens])]
    return title, text


_SENTENCE_END = re.compile(r"[.!?][\"'”’)]*(?=\s)")


def plant(e, text: str, facts: list[Fact], depths: list[float]) -> str:
    """Each fact as a sentence of its own, after the first sentence end at its depth (by tokens)."""
    from infini_reader.app.core.segments import tokenize_with_offsets

    ids, starts = tokenize_with_offsets(text, e.tokenizer)
    spots = []
    for fact, d in zip(facts, depths):
        pos = int(starts[min(int(d * len(ids)), len(ids) - 1)])
        m = _SENTENCE_END.search(text, pos)
        spots.append((m.end() if m else pos, fact))
    for at, fact in sorted(spots, key=lambda s: -s[0]):
        text = text[:at] + " " + fact.text + text[at:]
    return text


def _segments_of(starts: np.ndarray, a: int, b: int) -> set[int]:
    first = int(np.searchsorted(starts, a, side="right") - 1)
    last = int(np.searchsorted(starts, max(a, b - 1), side="right") - 1)
    return set(range(first, last + 1))


def _holds(c, a: int, b: int) -> bool:
    """The cited passage holds (at least half of) the fact's sentence."""
    return min(c.char_end, b) - max(c.char_start, a) >= (b - a) / 2


# ---- attribution variants ----

THIRDS = {"early": slice(0, 1 / 3), "middle": slice(1 / 3, 2 / 3), "late": slice(2 / 3, 1)}


def _layers(n: int, part: str) -> list[int]:
    """The layers in that third of the stack (the nearest one when a tiny model has none there)."""
    s = THIRDS[part]
    inside = [i for i in range(n) if s.start <= (i + 0.5) / n < s.stop]
    return inside or [min(n - 1, int((s.start + s.stop) / 2 * n))]


def _zscore(mass: np.ndarray) -> np.ndarray:
    """Per layer (and head): standardised over segments; then averaged."""
    m = mass.reshape(mass.shape[0], -1)
    return ((m - m.mean(0)) / np.maximum(m.std(0), 1e-12)).mean(1)


def variant_scores(qf, qh, nf, nh, sums: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Segment scores under each attribution variant. qf/nf: the question's and the neutral
    questions' features (layers, D); qh/nh per head (layers, H, D); sums (segments, layers, Hkv, D)."""
    avg = sums.mean(axis=2)  # what the library keeps (head-averaged)
    L = avg.shape[1]
    out = {"as committed: ÷ length, ÷ mean over segments": segment_scores(qf, avg, tokens)}
    mass, neutral = key_mass(qf, avg, tokens), key_mass(nf, avg, tokens)
    out["z-scored per layer"] = _zscore(mass)
    ratio = np.log(mass / neutral)
    out["÷ neutral question, all layers"] = ratio.mean(1)
    for part in THIRDS:
        out[f"÷ neutral question, {part} layers"] = ratio[:, _layers(L, part)].mean(1)
    out["(σ(q) − σ(q_neutral))·z, z-scored"] = _zscore(key_mass(qf - nf, avg, tokens))
    hmass, hneutral = key_mass(qh, sums, tokens), key_mass(nh, sums, tokens)
    hratio = np.log(hmass / hneutral)  # (S, L, H)
    out["per head, ÷ neutral, all layers"] = hratio.mean((1, 2))
    for part in THIRDS:
        out[f"per head, ÷ neutral, {part} layers"] = hratio[:, _layers(L, part)].mean((1, 2))
    out["per head, z-scored"] = _zscore(hmass)
    for layer in range(L):  # single layers: which ones carry anything (oracle choice, not a method)
        out[f"layer {layer}, ÷ neutral"] = ratio[:, layer]
    return out


def _rank(scores: np.ndarray, targets: set[int]) -> int:
    order = np.argsort(-scores, kind="stable")
    return int(min(np.nonzero(np.isin(order, list(targets)))[0]))


# ---- the run ----


def add_arguments(p) -> None:
    p.add_argument("--lengths", default="32K,128K,512K", help="book lengths in tokens (default 32K,128K,512K)")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="where the facts go, 0 = start, 1 = end")
    p.add_argument("--n", type=int, default=5, help="facts per length (default 5; they take the depths in turn)")
    p.add_argument(
        "--facts",
        default="generated",
        choices=["generated", "dev", "babi"],
        help="invented facts with paraphrased questions (dev: the development set, DEV_FACTS), or bAbI qa1 sentences",
    )
    p.add_argument("--no-paraphrases", action="store_true", help="ask only the direct questions")
    p.add_argument(
        "--answer-modes",
        default="hybrid,fused,bm25,memory",
        help="retrieval modes whose answers are generated (all modes' citations are scored)",
    )
    p.add_argument(
        "--fused-weights",
        default="",
        help="further memory weights of the fused mode whose citations are scored, e.g. 0.1,0.25",
    )
    p.add_argument("--passages", type=int, help="passages cited and re-read (default: RetrievalSettings')")
    p.add_argument("--window-tokens", type=int, help="re-read text around each passage (default: RetrievalSettings')")
    p.add_argument("--no-base", action="store_true", help="skip the base model on the last pages")
    p.add_argument("--index-only", action="store_true",
                   help="no memory pass: each book is split, full-text indexed and embedded, then asked at once "
                        "(as a book is while its memory is read); the memory's own modes are left out")
    p.add_argument("--base-tokens", type=int, default=BASE_TOKENS, help="text the base model reads (tokens)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--books", default=str(DATA / "gutenberg" / "valid.jsonl.xz"))
    p.add_argument("--babi", default=str(DATA / "babi" / "en-10k-train.txt.xz"))
    p.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    t_start = time.perf_counter()
    e = load_engine(args.model, args.device, adapter=args.adapter)
    base = None if args.no_base else base_engine(e)
    lengths = [parse_tokens(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    answer_modes = [m for m in args.answer_modes.split(",") if m in MODES]
    overrides = {k: v for k, v in (("passages", args.passages), ("window_tokens", args.window_tokens)) if v}
    modes = [m for m in MODES if not (args.index_only and m in ("memory", "fused"))]
    answer_modes = [m for m in answer_modes if m in modes]
    retrievals = [(m, RetrievalSettings(mode=m, **overrides)) for m in modes] + [
        (f"fused w={w}", RetrievalSettings(mode="fused", memory_weight=float(w), **overrides))
        for w in args.fused_weights.split(",")
        if w and not args.index_only
    ]
    books = list(read_jsonl(args.books))
    pool = {"generated": FACTS, "dev": DEV_FACTS}.get(args.facts) or babi_facts(args.babi, 10 * args.n, args.seed)
    nf = np.mean([query_features(e, q) for q in NEUTRAL_QUESTIONS], axis=0)
    nh = np.mean([query_features(e, q, per_head=True) for q in NEUTRAL_QUESTIONS], axis=0)
    result = {
        "command": "needle",
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "retrieval": asdict(RetrievalSettings(**overrides)),
        "lengths": [],
        "items": [],
    }
    used: set[int] = set()
    for li, N in enumerate(lengths):
        n = min(args.n, len(pool))
        facts = [pool[(li * n + i) % len(pool)] for i in range(n)]
        where = [depths[i % len(depths)] + 0.02 * (i // len(depths)) for i in range(n)]
        title, text = haystack(e, books, N, used)
        text = plant(e, text, facts, where)
        info = {"length": N, "title": title, "chars": len(text), "facts": n}
        with temporary_library() as (lib, folder):
            if args.index_only:
                doc_id, info["ingest_s"] = index_text(lib, folder, f"{title} needle {token_label(N)}", text)
                doc = lib.document(doc_id)
                plans = plan_segments(doc, e.tokenizer, e.config.segment_length)
                starts = np.array([p.char_start for p in plans])
                seg_tokens = np.array([len(p.token_ids) for p in plans])
                sums = None
            else:
                with key_sums_per_head(e) as captured:
                    doc_id, info["ingest_s"] = ingest_text(lib, e, folder, f"{title} needle {token_label(N)}", text)
                doc = lib.document(doc_id)
                starts = segment_starts(lib, e, doc_id)
                sums = np.stack(captured)  # (segments, layers, Hkv, D)
                seg_tokens = np.array(_segment_token_counts(lib, e, doc_id))
            info.update(segments=len(starts), tokens=int(seg_tokens.sum()), memory_pass=not args.index_only)
            items = []
            for fact, depth in zip(facts, where):
                a = doc.text.find(fact.text)
                if a < 0:
                    raise RuntimeError(f"the planted fact {fact.text!r} is not in the document's text")
                b = a + len(fact.text)
                segs = _segments_of(starts, a, b)
                asks = [("direct", fact.question)]
                if fact.paraphrase and not args.no_paraphrases:
                    asks.append(("paraphrase", fact.paraphrase))
                for kind, q in asks:
                    item = {
                        "length": N,
                        "depth": depth,
                        "kind": kind,
                        "question": q,
                        "key": fact.key,
                        "fact": fact.text,
                        "fact_segment": sorted(segs),
                        "modes": {},
                    }
                    for mode, st in retrievals:
                        cites = find_passages(lib, e, doc_id, q, st)
                        cited_segs = [_segments_of(starts, c.char_start, c.char_end) for c in cites]
                        item["modes"][mode] = {
                            "top1": bool(cites) and _holds(cites[0], a, b),
                            "top3": any(_holds(c, a, b) for c in cites[:3]),
                            "segment_top3": any(s & segs for s in cited_segs[:3]),
                            "citations": [[c.char_start, c.char_end] for c in cites],
                        }
                    item["attribution_rank"] = {}
                    if sums is not None:
                        qf, qh = query_features(e, q), query_features(e, q, per_head=True)
                        item["attribution_rank"] = {
                            name: _rank(s, segs) for name, s in variant_scores(qf, qh, nf, nh, sums, seg_tokens).items()
                        }
                    items.append(item)
            t0 = time.perf_counter()
            with cached_generation(e) as cache:
                for item in items:
                    for mode in answer_modes:
                        answer, _ = ask_once(
                            lib, e, doc_id, item["question"], mode, True, args.max_new_tokens, **overrides
                        )
                        item["modes"][mode].update(answer=answer, correct=has_key(answer, item["key"]))
            info.update(answer_s=time.perf_counter() - t0, generations=cache.misses, cached=cache.hits)
            if base is not None:
                t0 = time.perf_counter()
                tail = tail_text(e, doc.text, args.base_tokens)
                prompts = [base_prompt(doc.title, tail, it["question"]) for it in items]
                for item, answer in zip(items, answers_sharing_prefix(base, prompts, args.max_new_tokens)):
                    item["base"] = {
                        "answer": answer,
                        "correct": has_key(answer, item["key"]),
                        "fact_in_window": item["fact"] in tail,
                    }
                info["base_s"] = time.perf_counter() - t0
        result["lengths"].append(info)
        result["items"].extend(items)
        result["tables"] = tables(result, answer_modes, args)
        result["seconds"] = time.perf_counter() - t_start
        write_json(args.out, result)  # after each length: a long run stopped midway keeps what it did
    return result


def index_text(lib, folder, title: str, text: str) -> tuple[int, float]:
    """The book split, stored with its full-text index and embedded, not read: (doc id, seconds)."""
    from infini_reader.app.core.ingest import _read, index_passages
    from infini_reader.app.core.library import file_hash

    from .common import safe_name

    path = folder / f"{safe_name(title)}.txt"
    path.write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    doc_id = lib.add_document(_read(path), file_hash(path), path.stat().st_size)
    list(index_passages(lib, doc_id, title))
    return doc_id, time.perf_counter() - t0


def _segment_token_counts(lib, e, doc_id) -> list[int]:
    from sqlalchemy import func, select

    from infini_reader.app.core.db import SegmentRow, SnapshotRow

    with lib.Session() as s:
        snap = s.scalar(
            select(SnapshotRow.id).where(
                SnapshotRow.document_id == doc_id, SnapshotRow.model_fingerprint == e.fingerprint
            )
        )
        return [
            n // 4
            for n in s.scalars(
                select(func.length(SegmentRow.token_ids)).where(SegmentRow.snapshot_id == snap).order_by(SegmentRow.idx)
            )
        ]


def base_prompt(title: str, tail: str, question: str) -> list[dict]:
    return [
        {
            "role": "system",
            "content": f"You answer questions about the book “{title}”. Answer from the excerpt, briefly and plainly.",
        },
        {"role": "user", "content": f"The last pages of the book:\n\n{tail.strip()}\n\nQuestion: {question}"},
    ]


# ---- tables ----


def tables(result: dict, answer_modes: list[str], args) -> list[Table]:
    items = result["items"]
    lengths = [x["length"] for x in result["lengths"]]
    rows = []
    for kind in ("direct", "paraphrase"):
        for N in lengths:
            its = [it for it in items if it["length"] == N and it["kind"] == kind]
            if not its:
                continue
            extra = [m for m in its[0]["modes"] if m not in MODES]  # retrieval only: other fusion weights
            for mode in [*(m for m in MODES if m in its[0]["modes"]), *extra]:
                ms = [it["modes"][mode] for it in its]
                acc = pct(np.mean([m["correct"] for m in ms])) if mode in answer_modes else "–"
                rows.append(
                    [
                        kind,
                        token_label(N),
                        len(its),
                        mode,
                        acc,
                        pct(np.mean([m["top1"] for m in ms])),
                        pct(np.mean([m["top3"] for m in ms])),
                        pct(np.mean([m["segment_top3"] for m in ms])),
                    ]
                )
            if all("base" in it for it in its):
                rows.append(
                    [
                        kind,
                        token_label(N),
                        len(its),
                        f"base model, last {args.base_tokens} tokens",
                        pct(np.mean([it["base"]["correct"] for it in its])),
                        "–",
                        "–",
                        f"({pct(np.mean([it['base']['fact_in_window'] for it in its]))} in its window)",
                    ]
                )
    main = Table(
        "Needle: answers and citations",
        [
            "questions",
            "length",
            "n",
            "system",
            "answer has the key",
            "top-1 citation holds the fact",
            "top-3 hold it",
            "fact's segment in top-3 citations",
        ],
        rows,
    )
    names = list(items[0]["attribution_rank"]) if items else []
    layer_names = [n for n in names if n.startswith("layer ")]
    heads = ["attribution (segment rank of the fact)"] + [f"{token_label(N)} hit@1 / hit@3" for N in lengths]
    arows = []

    def row(label, ranks_by_len):
        arows.append(
            [label] + [f"{pct(np.mean(r < 1))} / {pct(np.mean(r < 3))}" if len(r) else "–" for r in ranks_by_len]
        )

    by_len = {N: [it for it in items if it["length"] == N] for N in lengths}
    for name in names:
        if name not in layer_names:
            row(name, [np.array([it["attribution_rank"][name] for it in by_len[N]]) for N in lengths])
    if layer_names:  # the best single layer over all lengths, hit@3 (chosen on these very questions)
        best = max(layer_names, key=lambda n: np.mean([it["attribution_rank"][n] < 3 for it in items]))
        row(
            f"best single {best} (chosen on these questions)",
            [np.array([it["attribution_rank"][best] for it in by_len[N]]) for N in lengths],
        )
    row("bm25 (segment of its top-3 passages, hit@3 only)", [])
    arows[-1][1:] = [f"– / {pct(np.mean([it['modes']['bm25']['segment_top3'] for it in by_len[N]]))}" for N in lengths]
    segs = {x["length"]: x.get("segments", 0) for x in result["lengths"]}
    arows.append(
        ["chance"] + [f"{pct(1 / max(segs[N], 1))} / {pct(min(3, segs[N]) / max(segs[N], 1))}" for N in lengths]
    )
    attr = Table(
        "Needle: memory attribution variants (all questions; segments: "
        + ", ".join(f"{token_label(N)} {segs[N]}" for N in lengths)
        + ")",
        heads,
        arows,
    )
    return [main, attr]
