"""Passkey retrieval, the grid of the paper's Table 3: a five-digit key hidden in filler text
(the paper's sentences, or book text with `--filler book`) at the start, middle or end of a
haystack of 32K to 1M tokens; the whole haystack is read into the memory, then "What is the pass
key? The pass key is" is asked in a fresh segment. Correct when the key's five digits come out;
three looser readings (`score`) show how near the misses are.

The haystack before the key's segment is the same filler for every key, so it is read once per
length and the memory at that segment boundary is reused (exact: the model is deterministic and
the same tokens give the same memory); each key then costs only the rest of the haystack.
`--batch K` reads K keys of one depth side by side (`Engine.ingest_many`), each from the boundary
before the earliest of them: on a GPU about K times faster, on a CPU a little slower (the rows
whose key lies later also read the segments between); the same keys, the same answers.

With `--out FILE.json` the file is rewritten after every key, and `--resume` continues a run that
was stopped: the keys already in the file (the same model, lengths, depths, keys per cell, seed
and filler) are kept and only the rest are read, so a row of hours (512K, 1M on a CPU) can be
measured over several sittings.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch

from infini_reader.engine.memory import Memory
from lab.train.data import passkey_ids

from .common import (DATA, Table, add_segment_length, load_engine, parse_tokens, pct, read_jsonl, token_label,
                     write_json)

DEPTHS = {"start": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "end": (2 / 3, 1.0)}


def add_arguments(p) -> None:
    p.add_argument("--lengths", default="32K,128K,256K,512K,1M", help="haystack tokens (default: the paper's grid)")
    p.add_argument("--depths", default="start,middle,end", help="thirds of the haystack where the key goes")
    p.add_argument("--keys", type=int, default=10, help="keys per length and depth (default 10)")
    p.add_argument("--filler", choices=["paper", "book"], default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="keys of one depth read side by side (a GPU: 10)")
    p.add_argument("--resume", action="store_true",
                   help="keep the keys already measured in --out FILE.json (same model and grid) and read the rest")
    add_segment_length(p)


PLAN_ARGS = ("lengths", "depths", "keys", "seed", "filler")  # what decides the keys and their haystacks


def _plan_value(key: str, value):
    """An option of the plan as the run reads it: lengths as token counts ("256K" is 262144), depths
    as names; the rest as given."""
    if key == "lengths":
        return [parse_tokens(x) for x in str(value).split(",")]
    if key == "depths":
        return [d.strip() for d in str(value).split(",")]
    return value


def _resumed(args, e) -> tuple[dict[int, dict], float]:
    """The items of an earlier, stopped run of the same grid in `args.out`, by their place in the
    plan, and the seconds it took; nothing when not resuming or no file is there yet."""
    if not args.resume:
        return {}, 0.0
    if not args.out:
        raise SystemExit("--resume needs --out FILE.json: the file the earlier run wrote")
    path = Path(args.out)
    if not path.exists():
        return {}, 0.0
    old = json.loads(path.read_text(encoding="utf-8"))
    mine = vars(args)
    theirs = old.get("args", {})
    differ = [k for k in PLAN_ARGS if _plan_value(k, theirs.get(k)) != _plan_value(k, mine.get(k))]
    if old.get("eval") != "passkey" or differ or old.get("fingerprint") != e.fingerprint:
        what = ", ".join(differ) or ("the model" if old.get("eval") == "passkey" else "the evaluation")
        raise SystemExit(f"--resume: {path} holds another run ({what} differ); give another --out or drop --resume")
    if int(old.get("segment_length", e.config.segment_length)) != e.config.segment_length:
        raise SystemExit(f"--resume: {path} was read with segments of {old['segment_length']} tokens")
    if any("index" not in it for it in old.get("items", [])):
        raise SystemExit(f"--resume: {path} was written before runs could be resumed; give another --out")
    return {it["index"]: it for it in old.get("items", [])}, float(old.get("seconds", 0.0))


def _book_filler(e, tokens: int) -> list[int]:
    text = []
    for b in read_jsonl(DATA / "gutenberg" / "valid.jsonl.xz"):
        text.append(b["text"])
        if sum(map(len, text)) > tokens * 5:
            break
    return e.tokenizer.encode("\n\n".join(text), add_special_tokens=False).ids[:tokens]


def score(key: str, answer: str) -> dict:
    """How near an answer is to the key: `correct`, the number answered is the key; `key_digits`,
    its first five digits are the key ("6049494" for 60494: found, not stopped); `same_digits`, its
    first five digits are the key's in some order ("42248." for 42824); `digit_share`, the share of
    the key's digits among its first five, counted as a multiset (0.8 for "42428." and 42834)."""
    m = re.search(r"\d+", answer)
    number = m.group() if m else ""
    head = number[: len(key)]
    common = Counter(head) & Counter(key)
    return {"correct": number == key, "key_digits": head == key, "same_digits": sorted(head) == sorted(key),
            "digit_share": sum(common.values()) / len(key)}


def _groups(plan: list, size: int) -> list[list[int]]:
    """Indices of the plan in runs of at most `size` keys of one depth, in the plan's order."""
    out: list[list[int]] = []
    for i, item in enumerate(plan):
        if out and len(out[-1]) < size and plan[out[-1][0]][0] == item[0]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@torch.inference_mode()
def answer(e, memory: Memory, question: list[int]) -> str:
    return "".join(e.generate(question, memory, max_new_tokens=8)).strip()


def run(args) -> dict:
    e = load_engine(args.model, args.device, adapter=args.adapter, segment_length=args.segment_length)
    rng = random.Random(args.seed)
    L = e.config.segment_length
    lengths, depths = _plan_value("lengths", args.lengths), _plan_value("depths", args.depths)
    earlier, earlier_seconds = _resumed(args, e)
    t_start = time.perf_counter()
    items: list[dict] = []
    index = 0  # an item's place in the whole grid's plan, the same in every sitting
    for N in lengths:
        filler = _book_filler(e, N) if args.filler == "book" else None
        plan = []  # (depth name, key, haystack with the key, question)
        for depth in depths:
            lo, hi = DEPTHS[depth]
            for _ in range(args.keys):
                key = str(rng.randint(10_000, 99_999))
                hay, question = passkey_ids(e.tokenizer, key, N, rng.uniform(lo, hi), filler)
                plan.append((depth, key, hay, question))
        first, index = index, index + len(plan)
        kept = [earlier[first + i] for i in range(len(plan)) if first + i in earlier]
        items += kept
        if kept:
            print(f"{token_label(N):>5} {len(kept)} of {len(plan)} keys kept from {args.out}", flush=True)
        todo = [i for i in range(len(plan)) if first + i not in earlier]
        if not todo:
            continue
        # the shared prefix: the haystack as far as every key's own segment, read once
        plain, _ = passkey_ids(e.tokenizer, "00000", N, 1.0, filler)  # the key at the very end
        starts = {}  # per planned item still to read: the segment boundary before its key
        for i in todo:
            hay = plan[i][2]
            differ = next(j for j, (a, b) in enumerate(zip(hay, plain)) if a != b)
            starts[i] = differ // L * L
        snapshots, mem, pos = {}, e.new_memory(), 0
        for b in sorted(set(starts.values())):
            if b > pos:
                mem = e.ingest(plain[pos:b], mem)
                pos = b
            snapshots[b] = mem
        for group in _groups([plan[i] for i in todo], max(1, args.batch)):
            group = [todo[g] for g in group]
            t0 = time.perf_counter()
            b = min(starts[i] for i in group)
            if len(group) == 1:
                memories = [e.ingest(plan[group[0]][2][starts[group[0]]:], snapshots[starts[group[0]]])]
            else:  # every row from the earliest boundary: the same tokens before its own key's segment
                memories = e.ingest_many([plan[i][2][b:] for i in group], snapshots[b])
            done = []
            for i, memory in zip(group, memories):
                depth, key, hay, q = plan[i]
                out = answer(e, memory, q)
                sc = score(key, out)
                done.append({"index": first + i, "length": N, "depth": depth, "key": key, "answer": out, **sc,
                             "tokens": len(hay)})
                mark = "ok" if sc["correct"] else "digits" if sc["key_digits"] else "order" if sc["same_digits"] else "--"
                print(f"{token_label(N):>5} {depth:6} {key} → {out!r:16} {mark}", flush=True)
            seconds = round((time.perf_counter() - t0) / len(group), 1)  # a key's share of its group
            items += [d | {"seconds": seconds} for d in done]
            if args.out:  # a stopped run keeps every key measured so far (`--resume`)
                write_json(args.out, _result(args, e, lengths, depths, items, earlier_seconds + time.perf_counter()
                                             - t_start, complete=False))
        del snapshots
    items.sort(key=lambda it: it["index"])
    result = _result(args, e, lengths, depths, items, earlier_seconds + time.perf_counter() - t_start, complete=True)
    write_json(args.out, result)
    return result


def _result(args, e, lengths: list[int], depths: list[str], items: list[dict], secs: float, complete: bool) -> dict:
    L = e.config.segment_length
    headers = ["length"] + depths + ["all"]
    tables = []
    for field, what in (("correct", "the number answered is the key"),
                        ("key_digits", "the answer's first five digits are the key"),
                        ("same_digits", "the answer's first five digits are the key's in some order"),
                        ("digit_share", "share of the key's digits among the answer's first five")):
        rows = []
        for N in lengths:
            row = [token_label(N)]
            for d in depths + [None]:
                sel = [i[field] for i in items if i["length"] == N and (d is None or i["depth"] == d)]
                if not sel:
                    row.append("–")
                elif field == "digit_share":
                    row.append(pct(sum(sel) / len(sel)))
                else:
                    row.append(f"{pct(sum(sel) / len(sel))} ({sum(sel)}/{len(sel)})")
            rows.append(row)
        tables.append(Table(f"Passkey retrieval, {what}; {args.filler} filler, {args.keys} keys per cell "
                            f"({e.source}; segments of {L} tokens)", headers, rows))
    return {"eval": "passkey", "model": e.source, "fingerprint": e.fingerprint, "segment_length": L,
            "args": vars(args) | {"func": None}, "complete": complete, "items": items, "tables": tables,
            "seconds": secs}
