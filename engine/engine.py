"""The public face of the engine: load a model, stream documents into a memory, score tokens.

    from infini_reader import engine
    e = engine.load_model("path/to/model-folder")
    mem = e.ingest(tokens, e.new_memory())
    logits = e.logits(question_tokens, mem)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path

import torch

from .adapter import apply_adapter
from .chat import read_chat_format
from .checkpoint import (
    ModelLoadError,
    export_hf_directory,
    load_prepared,
    load_weights,
    prepared_path,
    read_hf_directory,
    read_tokenizer,
    save_prepared,
    weights_fingerprint,
    weights_state,
)
from .config import InfiniConfig
from .gguf import cached_folder as cached_gguf_folder
from .gguf import file_sha256, is_gguf
from .generate import generate_ids, detokenize
from .memory import Memory, SnapshotError
from .model import InfiniTransformer, LayerMemory, add_delta

Progress = Callable[[int, int], None]  # (tokens done, tokens total)


DTYPE_ENV = "INFINI_DTYPE"  # auto | float32 | bfloat16 | float16: overrides the choice for the machine
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), as far as this process may use them: PyTorch's
    ATEN_CPU_CAPABILITY and oneDNN's ONEDNN_MAX_CPU_ISA, when they cap the instruction set at AVX2 or
    below, hide the AVX-512 and AMX flags too, so that forcing the AVX2 path forces our choice as well."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    capped = (os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2", "sse4")
              or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI"))
    if capped:
        flags = {f for f in flags if not f.startswith(("avx512", "amx"))}
    return flags


def cpu_has_fast_bf16() -> bool:
    """bf16 products may run in hardware (AVX-512 BF16 or AMX): the flags allow it. Elsewhere they are
    emulated, several times slower than float32. Flags are not enough (`bf16_measures_faster`)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


BF16_MARGIN = 1.25  # bf16 is chosen when its products run at least this much faster than float32's


def _cpu_key() -> str:
    """What the probe's answer depends on: the CPU (model name and usable flags), PyTorch, threads."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = next((ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    raw = f"{model}|{' '.join(sorted(cpu_flags()))}|{torch.__version__}|{torch.get_num_threads()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def probe_bf16_speedup(rows: int = 1024, cols: int = 576, out: int = 1536, rounds: int = 3) -> float:
    """bf16 over float32 product rate on this CPU, at a decoder layer's shape as reading runs it (rows ×
    cols @ cols × out; at 256 rows the same CPU gave 1.0-1.4, at 1024-2048 rows 0.7, as reading a
    book did), alternated `rounds` times, best of each: about 0.2 s. Some CPUs list avx512_bf16 and still
    run bf16 products slower than float32 (a 2-core Xeon of this workplace: 0.18 against 0.31 TFLOP/s
    on 2026-12-07), so the flags alone cannot choose."""
    import time

    best = {}
    with torch.inference_mode():
        pairs = {dt: (torch.randn(rows, cols, dtype=dt), torch.randn(out, cols, dtype=dt))
                 for dt in (torch.float32, torch.bfloat16)}
        for _ in range(rounds):
            for dt, (a, w) in pairs.items():
                torch.nn.functional.linear(a, w)  # warm: oneDNN's first call creates its kernel
                t = time.perf_counter()
                for _ in range(2):
                    torch.nn.functional.linear(a, w)
                best[dt] = min(best.get(dt, float("inf")), time.perf_counter() - t)
    return best[torch.float32] / best[torch.bfloat16]


_BF16_CHOICE: dict[str, bool] = {}


def bf16_measures_faster(cache_dir: str | Path | None = None) -> bool:
    """bf16 on this CPU: the flags allow it and its products measure at least BF16_MARGIN × float32's.
    Measured once per CPU, PyTorch and thread count, and kept in `cache_dir` (cpu-dtype.json) so that
    every later process (and every reading of a book) makes the same choice."""
    if not cpu_has_fast_bf16():
        return False
    key = _cpu_key()
    if key in _BF16_CHOICE:
        return _BF16_CHOICE[key]
    record = Path(cache_dir) / "cpu-dtype.json" if cache_dir is not None else None
    known = {}
    if record is not None:
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float))):
        entry = {"speedup": round(probe_bf16_speedup(), 3)}
        if record is not None:
            try:
                record.parent.mkdir(parents=True, exist_ok=True)
                tmp = record.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**known, key: entry}))
                os.replace(tmp, record)
            except OSError:  # a read-only or full cache: measured again next time, nothing else lost
                pass
    _BF16_CHOICE[key] = entry["speedup"] >= BF16_MARGIN
    return _BF16_CHOICE[key]


def tune_allocator() -> None:
    """Keep freed working buffers in the process on Linux/glibc.

    Each segment allocates and frees tensors of several MB (attention scores, MLP activations).
    With glibc's defaults they are returned to the OS and faulted in again, millions of page faults
    per book; measured side by side (docs/performance.md) keeping them gave about +40% ingest speed.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: blocks below it come from the heap
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # another C library: nothing to tune
        pass


def resolve_device(device: str | torch.device) -> torch.device:
    """auto, cpu, cuda or cuda:N (the Nth GPU this process sees); a device that is not there is a
    one-line ModelLoadError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unsupported device {str(device)!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"a GPU ({device}) was asked for, but PyTorch sees none; use device 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ModelLoadError(f"GPU {device} was asked for, but PyTorch sees {n} (cuda:0 to cuda:{n - 1})")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, cache_dir: str | Path | None = None) -> torch.dtype:
    """The compute dtype: what is fast on this device. "auto" (or $INFINI_DTYPE when set) gives bf16
    on GPUs that have it (else float16), bf16 on CPUs whose flags allow it and where it measures
    faster than float32 (`bf16_measures_faster`, remembered in `cache_dir`), float32 on every other
    CPU. The memory (M, z) is float32 whatever this returns."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dtype = os.environ.get(DTYPE_ENV, "auto").strip().lower() or "auto"
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if bf16_measures_faster(cache_dir) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


_DECODER_LOCK = threading.Lock()


class Engine:
    """A model ready to read: weights on a device, an optional tokenizer, a fingerprint."""

    def __init__(
        self,
        model: InfiniTransformer,
        tokenizer=None,
        source: str = "",
        tokenizer_json: str | None = None,
        chat=None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`, or None for token-id-only use
        self.tokenizer_json = tokenizer_json
        self.source = source
        self.chat = chat  # an `engine.chat.ChatFormat` (template, stop tokens), or None

    @property
    def config(self) -> InfiniConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def calibration_ids(self) -> torch.Tensor | None:
        """engine/calibration.py's text as token ids: what the int8 decoder measures its inputs on."""
        if self.tokenizer is None:
            return None
        from .calibration import CALIBRATION_TEXT

        return torch.tensor(self.tokenizer.encode(CALIBRATION_TEXT, add_special_tokens=False).ids)

    decode_cache: Path | None = None  # where the int8 decoder's measured input ranges are kept (load_model)

    def int8_decoder(self):
        """The int8 one-token decoder of this model (engine/quant.py), made once per set of weights:
        its input ranges are measured on the calibration text the first time and kept beside the
        prepared weights, so later processes skip that reading (about half of the decoder's making)."""
        from . import quant

        with _DECODER_LOCK:  # one making at a time: a second caller waits for the first's
            return self._int8_decoder(quant)

    def _int8_decoder(self, quant):
        d = quant.Int8Decoder.current(self.model)
        if d is not None:
            return d
        meta = None
        ranges = None
        if self.decode_cache is not None and self.tokenizer is not None:
            ids = self.calibration_ids
            meta = {"fingerprint": self.fingerprint, "calibration": hashlib.sha256(ids.numpy().tobytes()).hexdigest()}
            ranges = quant.load_ranges(self.decode_cache, meta, self.config.num_hidden_layers)
        d = quant.Int8Decoder.for_model(self.model, self.calibration_ids, ranges)
        if meta is not None and ranges is None:
            try:
                quant.save_ranges(self.decode_cache, d.ranges, meta)
            except OSError:  # a read-only or full cache: measured again next time
                pass
        return d

    def prepare_decode(self, decode: str | None = None) -> bool:
        """Make the int8 decoder now if answers will use it (`quant.resolve_decode`), so that the first
        answer does not wait for it. True if it was needed."""
        from .quant import resolve_decode

        if resolve_decode(decode, self.device) != "int8":
            return False
        self.int8_decoder()
        return True

    @cached_property
    def fingerprint(self) -> str:
        # load_model knows it for a model read from prepared weights: the hash of those same weights,
        # computed this way when they were written (engine/checkpoint.py). It holds while no weight has
        # been written or replaced since (tests and the lab change loaded models in place).
        known = self.__dict__.pop("_loaded_fingerprint", None)
        if known is not None and known[1] == weights_state(self.model):
            return known[0]
        return weights_fingerprint(self.model)

    # ---- memory ----

    def new_memory(self) -> Memory:
        c = self.config
        Hkv, D = c.num_key_value_heads, c.head_dim
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float32, device=self.device)  # noqa: E731
        return Memory(
            [zeros(Hkv, D, D) for _ in range(c.num_hidden_layers)],
            [zeros(Hkv, D) for _ in range(c.num_hidden_layers)],
            self.fingerprint, c.memory_update, c.segment_length, 0,
        )

    def check_memory(self, memory: Memory) -> None:
        if memory.fingerprint != self.fingerprint:
            raise SnapshotError(
                "this memory was made by a different model; read the document again with the current "
                "model, or switch back to the model that made it"
            )

    def _as_layers(self, memory: Memory | None) -> list[LayerMemory] | None:
        if memory is None or memory.empty:
            return None
        self.check_memory(memory)
        return [(M.to(self.device)[None], z.to(self.device)[None]) for M, z in zip(memory.M, memory.z)]

    def _to_memory(self, layers: list[LayerMemory] | None, like: Memory, tokens: int) -> Memory:
        out = like.clone() if layers is None else Memory(
            [M[0] for M, _ in layers], [z[0] for _, z in layers], self.fingerprint,
            self.config.memory_update, self.config.segment_length, 0, dict(like.extra),
        )
        out.tokens = like.tokens + tokens
        return out

    def _ids(self, tokens_or_text: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(tokens_or_text, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            tokens_or_text = self.tokenizer.encode(tokens_or_text, add_special_tokens=False).ids
        ids = torch.as_tensor(tokens_or_text, dtype=torch.long).reshape(-1)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        return ids.to(self.device)

    # ---- reading ----

    @torch.inference_mode()
    def ingest(
        self,
        tokens_or_text,
        memory: Memory,
        progress: Progress | None = None,
        on_segment: Callable[[int, torch.Tensor], None] | None = None,
    ) -> Memory:
        """Stream tokens through the model segment by segment; return the memory after the last one.

        The given memory is not modified. A trailing partial segment is written too, so to continue
        a document across calls with the same result as one call, pass whole segments.
        `on_segment(i, key_summary)` receives, for segment i of this call, its key summary: per
        layer, the segment's own Σ_t σ(K_t) averaged over key/value heads, (layers, d_key) float32;
        σ(q)·summary is the retrieval mass a query would send to that segment (attribution).
        """
        ids = self._ids(tokens_or_text)
        layers = self._as_layers(memory)
        L, n = self.config.segment_length, ids.numel()
        for i, s in enumerate(range(0, n, L)):
            _, deltas = self.model.segment(ids[None, s : s + L], layers, write_only=True)
            layers = add_delta(layers, deltas)
            if on_segment is not None:
                on_segment(i, torch.stack([dz[0].mean(0) for _, dz in deltas]).cpu())
            if progress is not None:
                progress(min(s + L, n), n)
        return self._to_memory(layers, memory, n)

    @torch.inference_mode()
    def ingest_many(self, rows: Sequence[Sequence[int]], memory: Memory) -> list[Memory]:
        """Several token sequences of one length, each read on top of the same memory, side by side:
        row j's memory is what `ingest(rows[j], memory)` gives (to rounding: the products see B rows
        at once), and each segment is one pass of B rows. On a GPU that is about the time of one row
        (the evaluations read many haystacks that differ in a few tokens); on a CPU, about B times it."""
        ids = [self._ids(r) for r in rows]
        if not ids or len({len(r) for r in ids}) != 1:
            raise ValueError("ingest_many reads rows of one length (and at least one)")
        ids = torch.stack(ids)
        B, n = ids.shape
        layers = self._as_layers(memory)
        if layers is not None:  # one memory for every row to start from
            layers = [(M.expand(B, *M.shape[1:]).contiguous(), z.expand(B, *z.shape[1:]).contiguous()) for M, z in layers]
        L = self.config.segment_length
        for s in range(0, n, L):
            _, deltas = self.model.segment(ids[:, s : s + L], layers, write_only=True)
            layers = add_delta(layers, deltas)
        return [self._to_memory(None if layers is None else [(M[j : j + 1], z[j : j + 1]) for M, z in layers],
                                memory, n) for j in range(B)]

    @torch.inference_mode()
    def logits(self, token_ids, memory: Memory | None = None) -> torch.Tensor:
        """Float32 logits (len(token_ids), vocab) for every position, processing the tokens in
        segments from the given (or an empty) memory. The given memory is not modified."""
        ids = self._ids(token_ids)
        layers = self._as_layers(memory)
        L = self.config.segment_length
        out = []
        for s in range(0, ids.numel(), L):
            h, deltas = self.model.segment(ids[None, s : s + L], layers)
            out.append(self.model.lm_head(h[0]).float())
            if s + L < ids.numel():
                layers = add_delta(layers, deltas)
        if not out:
            return torch.zeros(0, self.config.vocab_size)
        return torch.cat(out)

    # ---- writing ----

    def generate(
        self,
        prompt_or_messages,
        memory: Memory | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        on_memory: Callable[[Memory], None] | None = None,
        repetition_penalty: float = 1.0,
        decode: str | None = None,
    ) -> Iterator[str]:
        """Stream the answer to a prompt, on top of a memory, as text pieces.

        `prompt_or_messages`: chat messages ([{"role": ..., "content": ...}]), a string (a user
        message when the model has a chat format, plain text otherwise) or token ids (used as they
        are). Greedy when temperature is 0. The given memory is never modified; `on_memory`, if
        given, receives the memory after the prompt and the answer once generation ends. `decode`:
        how the answer's tokens are decoded, "int8" (the CPU's default), "exact" or "auto"/None
        ($INFINI_DECODE); see engine/quant.py. The prompt is read exactly either way; the memory given
        to `on_memory` includes the answer's tokens as they were decoded.
        """
        ids = self.prompt_ids(prompt_or_messages)
        layers = self._as_layers(memory)
        stop_ids = frozenset(self.chat.stop_token_ids if self.chat else ())
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer; use generate_ids for token ids")
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        base = memory if memory is not None else self.new_memory()

        def end(stream) -> None:
            if on_memory is not None:
                on_memory(self._to_memory(stream.final_memory(), base, stream.tokens))

        tokens = generate_ids(self.model, ids, layers, max_new_tokens, temperature, top_p, stop_ids, gen, end,
                              repetition_penalty, decode, self.int8_decoder)
        decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
        return detokenize(tokens, decode, list(stop or []))

    def prompt_ids(self, prompt_or_messages) -> torch.Tensor:
        p = prompt_or_messages
        if isinstance(p, str) and self.chat is not None:
            p = [{"role": "user", "content": p}]
        if isinstance(p, list) and p and isinstance(p[0], dict):
            if self.chat is None:
                raise ValueError("this model has no chat format; pass plain text")
            p = self.chat.render(p, add_generation_prompt=True)
        ids = self._ids(p)
        if ids.numel() == 0:
            raise ValueError("the prompt is empty")
        return ids

    # ---- saving ----

    def export_hf(self, directory: str | Path) -> None:
        export_hf_directory(self.model, Path(directory), self.tokenizer_json, self.chat)


def build_model(cfg: InfiniConfig, device="cpu", dtype=torch.float32, seed: int | None = None) -> InfiniTransformer:
    """A randomly initialised model (tests, benchmarks)."""
    if seed is not None:
        torch.manual_seed(seed)
    return InfiniTransformer(cfg).to(device=device, dtype=dtype)


def load_model(source: str | Path, device: str = "auto", dtype: str = "auto", adapter: str | Path | None = None,
               cache_dir: str | Path | None = None, name: str | None = None, **overrides) -> Engine:
    """Load a model from a GGUF file or a Hugging Face style folder.

    A GGUF file is converted once into a float32 Hugging Face folder under `cache_dir` (required for
    GGUF files; the application passes its user cache folder); later loads read that folder.
    `adapter`: an adapter file to apply, or None for the plain converted model. `name` is what the
    engine calls itself (`Engine.source`; default: the source path, with the adapter's stem).
    `overrides` set config fields such as segment_length.
    """
    tune_allocator()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev, cache_dir)
    path = Path(source)
    if path.is_dir():
        folder = path
    elif path.is_file() and (is_gguf(path) or path.suffix.lower() == ".gguf"):
        if cache_dir is None:
            raise ValueError("loading a GGUF file needs a cache_dir for its converted weights")
        folder = cached_gguf_folder(path, cache_dir)
    elif not path.exists():
        raise ModelLoadError(f"{source}: no such file or folder")
    else:
        raise ModelLoadError(
            f"{source}: not a model; give a GGUF file or a folder with config.json and *.safetensors"
        )
    cfg, tensors = read_hf_directory(folder, **overrides)  # memory-mapped, not read
    # A converted GGUF file: the model as loaded (adapter merged, in dt) and its fingerprint are cached
    # beside its weights the first time, then memory-mapped straight into the model (checkpoint.py).
    prepared = loaded = fingerprint = None
    if folder != path:
        adapter_sha = None if adapter is None else file_sha256(Path(adapter), cache_dir)
        prepared = prepared_path(folder, cfg, dt, adapter_sha)
        loaded = load_prepared(prepared, folder, cfg, tensors)
    if loaded is not None:
        model, fingerprint = loaded
    else:
        model = load_weights(cfg, tensors, str(source))
        if adapter is not None:
            apply_adapter(model, adapter)
        model = model.to(dtype=dt)
        if prepared is not None:
            fingerprint = save_prepared(prepared, folder, model)
    del tensors
    if name is None:
        name = str(source) if adapter is None else f"{source}+{Path(adapter).stem}"
    tokenizer, tok_json = read_tokenizer(folder)
    chat = read_chat_format(folder, tokenizer, cfg.eos_token_id)
    e = Engine(model.to(device=dev, dtype=dt), tokenizer, name, tok_json, chat=chat)
    if fingerprint is not None:  # computed by weights_fingerprint when these very weights were prepared
        e._loaded_fingerprint = (fingerprint, weights_state(e.model))
    if prepared is not None:
        e.decode_cache = prepared.with_name(prepared.stem + ".int8-ranges.safetensors")
    return e
