"""Decoding one token on the CPU with int8 weights: answers stream faster, reading is untouched.

A decoded token reads every weight of the model once (about 540 MB in float32 for the built-in
model) for a few hundred one-row products, so its speed is the memory's bandwidth and the number of
small operations. This module prepares, once per set of weights, what the one-token step needs:

- every layer's products as fbgemm int8 matrices (per output channel), run by PyTorch's dynamic int8
  linear (the activation row quantized on the fly), with q/k/v (and an adapter's low-rank A) fused
  into one product and gate/up into another: a quarter of the bytes and 4 products per layer;
- SmoothQuant (Xiao et al., 2023): each product's input channels are divided by s = max|X|^α /
  max|W|^(1-α) and its weight's columns multiplied by s, the ranges max|X| measured once by reading
  engine/calibration.py's text (kept on disk by `Engine.int8_decoder`); the division costs nothing,
  folded into the norm weights (q/k/v, gate/up), the memory gates (o) and up's rows (down). Without
  it int8 cost 3.5% of held-out perplexity, with it about 1.5-2.2% (docs/performance.md);
- LLM.int8()'s decomposition (Dettmers et al., 2022), available and off by default: each token's k
  largest inputs multiplied in float32 beside the int8 product of the rest (QLinear's `outliers`,
  OUTLIERS); for the down projection it cut the int8 cost on held-out text by about a third, and
  the decode rate by a quarter against llama.cpp's (docs/performance.md);
- the vocabulary head in int8 as a shortlist: its TOPK best candidates are scored again exactly
  with the float weights, so the greedy token is the float head's whenever the float winner is
  among the int8 head's TOPK (tested on the built-in model);
- rotary as one small product per layer with a (D, D) rotation made once per token, RMSNorm in two
  operations, the memory read as one batched product against each query head's [g·M | z], and what
  each token adds to the memory written once per segment (`settle`) instead of once per token.

What stays float32: the memory path (σ(K), σ(Q), the read M / z and what the tokens add to the
memory), attention over the segment's cache, norms, residuals. Prompts go through
`InfiniTransformer.segment` as always, and reading a document (`Engine.ingest`) never comes here,
so the memories stored for books are exactly those of the float model: the model's fingerprint does
not change. Only the answer's tokens are decoded here; the memory handed to `generate(on_memory=)`
includes them as this path computed them.

Choice: `INFINI_DECODE` = auto (default) | int8 | exact, or `generate(decode=...)`. Auto is int8 on a
CPU whose PyTorch has fbgemm (x86), exact elsewhere: about 2.5x the exact path's tokens/s, about
half of llama.cpp's on the same GGUF, for +2.15% perplexity on 2,496 held-out tokens (+1.65% with
PyTorch forced to AVX2), over the 1% aimed for: `INFINI_DECODE=exact` gives the exact path.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .memory import memory_delta
from .model import InfiniTransformer, LayerMemory, SegmentCache

DECODE_ENV = "INFINI_DECODE"
MODES = ("auto", "int8", "exact")
REDUCE_RANGE = True
TOPK = 64  # vocabulary head: int8 candidates rescored with the float weights


def int8_supported() -> bool:
    """PyTorch's dynamic int8 linear (fbgemm, x86) is in this build."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


def resolve_decode(mode: str | None, device: torch.device | str) -> str:
    """"int8" or "exact" for decoding on `device`: `mode`, else $INFINI_DECODE, else auto (exact, see
    the module's text). int8 needs a CPU and PyTorch's fbgemm kernels; elsewhere it is exact."""
    m = (mode or os.environ.get(DECODE_ENV, "auto")).strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"unknown decode mode {m!r}; use auto, int8 or exact")
    if m == "int8" and torch.device(device).type != "cpu":
        return "exact"  # the int8 kernels are the CPU's
    if m == "int8" and not int8_supported():
        return "exact"
    if m == "auto":  # int8 where it runs (a CPU with fbgemm): held-out perplexity within 1% (docs/performance.md)
        return "int8" if torch.device(device).type == "cpu" and int8_supported() else "exact"
    return m


class QLinear:
    """y = x Wᵀ (+ b) with W (out, in) in int8, one scale per output row, activations quantized on
    the fly with one scale for the whole input (fbgemm; the decode step's input is one row).
    reduce_range: 7-bit activations, so that no pair of u8 × s8 products overflows 16 bits on CPUs
    without VNNI.

    `outliers` = k > 0: LLM.int8()'s mixed-precision decomposition (Dettmers et al., 2022), per
    token: each row's k largest |x| are taken out of the int8 row (which they would otherwise scale,
    leaving the other channels a few levels) and multiplied in float32 with their columns of W (kept
    in float16: its rounding is a fraction of int8's). Chosen per token, not per channel: the MLP's
    activations spike on different channels for different tokens, and 8-64 channels fixed by the
    calibrated ranges made held-out perplexity worse, not better (docs/performance.md)."""

    __slots__ = ("packed", "k", "w_t")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, outliers: int = 0):
        w = weight.detach().float().contiguous()
        self.k = min(int(outliers), w.shape[1])
        # (in, out) in float16, the outliers' rows (53 MB for the built-in model's down projections)
        self.w_t = w.T.to(torch.float16).contiguous() if self.k > 0 else None
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in favour of torchao
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 0:
            return torch.ops.quantized.linear_dynamic(x, self.packed, REDUCE_RANGE)
        idx = x.abs().topk(self.k, 1, sorted=False).indices  # (B, k): each row's own outliers
        y = torch.ops.quantized.linear_dynamic(x.scatter(1, idx, 0.0), self.packed, REDUCE_RANGE)
        if x.shape[0] == 1:  # the decode step: one (1, k) × (k, out) product
            return y.addmm_(x.gather(1, idx), self.w_t.index_select(0, idx.view(-1)).float())
        return y.add_(F.embedding_bag(idx, self.w_t.float(), mode="sum", per_sample_weights=x.gather(1, idx)))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of rows x (B, C) with weight w, in fewer operations than F.rms_norm for one row
    (10 µs against 16 here: it runs 61 times a token)."""
    if x.shape[0] == 1:
        n = float(torch.linalg.vector_norm(x))
        return x * w * (1.0 / math.sqrt(n * n / x.shape[1] + eps))
    return F.rms_norm(x, (x.shape[1],), w, eps)


def rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R (D, D) with x R = x·cos + rotate_half(x)·sin for one position (cos/sin (D,)): rotary as
    one product (half-split layout, as `apply_rotary`)."""
    D = cos.shape[-1]
    h = D // 2
    R = torch.diag(cos)
    idx = torch.arange(h)
    R[idx + h, idx] = -sin[:h]  # out[i] (i < h) gets -x[i + h]·sin[i]
    R[idx, idx + h] = sin[h:]  # out[i + h] gets x[i]·sin[i + h]
    return R


PRODUCTS = ("qkv", "o", "gu", "down")  # the inputs measured: q/k/v's, o's, gate/up's, down's
ALPHA = {"qkv": 0.8, "o": 0.6, "gu": 0.6, "down": 0.6}  # SmoothQuant's migration strength per product
# Per product, each token's k largest inputs kept out of int8 and multiplied in float32 (QLinear's
# `outliers`): the down projection's input, the MLP's activations, spikes. down 16 (with α 0.4)
# cut the int8 cost on held-out books from +2.15% to +1.31%, but decoding fell from 0.58× to 0.42×
# llama.cpp's (lab.bench --sections llama, docs/performance.md): off until it is cheaper.
OUTLIERS = {"qkv": 0, "o": 0, "gu": 0, "down": 0}


@torch.no_grad()
def input_ranges(model: InfiniTransformer, calibration: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
    """Per layer, the largest |value| of each input channel of its four products, float32, over one
    exact reading of `calibration` (1-D token ids; None: 512 fixed pseudo-random ids, for models
    without a tokenizer)."""
    cfg = model.config
    if calibration is None:
        calibration = torch.randint(0, cfg.vocab_size, (512,), generator=torch.Generator().manual_seed(0))
    ids = calibration[: cfg.segment_length].to(model.lm_head.weight.device)
    out = [dict.fromkeys(PRODUCTS) for _ in model.model.layers]
    hooks = []

    def record(i: int, name: str):
        def hook(module, args):
            a = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
            out[i][name] = a if out[i][name] is None else torch.maximum(out[i][name], a)
        return hook

    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        for name, module in zip(PRODUCTS, (a.q_proj, a.o_proj, m.gate_proj, m.down_proj)):
            hooks.append(module.register_forward_pre_hook(record(i, name)))
    try:
        model.segment(ids[None], None)
    finally:
        for h in hooks:
            h.remove()
    return [{k: (v if v is not None else torch.ones(1)).cpu() for k, v in d.items()} for d in out]


def smoothing(act: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s = max|X|^α / max|W|^(1-α) (Xiao et al., 2023): the
    product's input is divided by s and its weight's columns multiplied by s."""
    w = weight.detach().float().abs().amax(0).clamp_min(1e-5)
    s = act.clamp_min(1e-5).pow(alpha) / w.pow(1 - alpha)
    return s.clamp_min(1e-5).expand_as(w).contiguous()


def save_ranges(path: Path, ranges: list[dict[str, torch.Tensor]], meta: dict[str, str]) -> None:
    """The input ranges as a safetensors file (written to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    tensors = {f"{i}.{k}": v.contiguous() for i, d in enumerate(ranges) for k, v in d.items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_ranges(path: Path, meta: dict[str, str], layers: int) -> list[dict[str, torch.Tensor]] | None:
    """Ranges saved by `save_ranges` with the same metadata, else None (absent, damaged, other weights)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != meta:
                return None
            return [{k: f.get_tensor(f"{i}.{k}") for k in PRODUCTS} for i in range(layers)]
    except Exception:  # absent, truncated, or written by other code: measured again
        return None


class _Layer:
    __slots__ = ("n1", "n2", "qkv", "o", "gate_up", "down", "g", "one_minus_g", "A_qkv", "B_qkv", "A_o", "B_o")


class Int8Decoder:
    """The one-token step of an `InfiniTransformer` with int8 products (see the module's text).

    Made by `for_model`, which keeps one per model and makes it again when a weight changes."""

    def __init__(self, model: InfiniTransformer, calibration: torch.Tensor | None = None,
                 ranges: list[dict[str, torch.Tensor]] | None = None):
        cfg = self.cfg = model.config
        self.model = model
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.layers = []
        self.ranges = ranges = ranges if ranges is not None else input_ranges(model, calibration)
        with torch.no_grad():
            for layer, rng in zip(model.model.layers, ranges):
                a, m = layer.self_attn, layer.mlp
                f = lambda t: t.detach().float()  # noqa: E731
                s = {k: smoothing(v, w, ALPHA[k]) for (k, v), w in zip(rng.items(), (
                    torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)), a.o_proj.weight,
                    torch.cat((m.gate_proj.weight, m.up_proj.weight)), m.down_proj.weight))}
                L = _Layer()
                # Each product's input x is given as x / s (channel by channel) and its weight as W·s: the
                # same product, with the input's outlier channels tamed for int8 (SmoothQuant). x / s is
                # free: folded into the norm weights (qkv, gate/up), the gates (o) and up's rows (down).
                L.n1 = f(layer.input_layernorm.weight) / s["qkv"]
                L.n2 = f(layer.post_attention_layernorm.weight) / s["gu"]
                qkv_b = None
                if a.q_proj.bias is not None:
                    qkv_b = torch.cat((a.q_proj.bias, a.k_proj.bias, a.v_proj.bias))
                W_qkv = torch.cat((f(a.q_proj.weight), f(a.k_proj.weight), f(a.v_proj.weight)))
                L.o = QLinear(f(a.o_proj.weight) * s["o"], a.o_proj.bias, OUTLIERS["o"])
                W_gu = torch.cat((f(m.gate_proj.weight), f(m.up_proj.weight) / s["down"][:, None])) * s["gu"]
                L.gate_up = QLinear(W_gu, None, OUTLIERS["gu"])
                L.down = QLinear(f(m.down_proj.weight) * s["down"], None, OUTLIERS["down"])
                g = torch.sigmoid(f(a.memory_gate))
                so = s["o"].view(H, D)
                L.g = g[:, None] / so  # (H, D): folded into each query head's [M | z] (`_mzg`)
                L.one_minus_g = ((1 - g)[:, None] / so).view(1, H, 1, D)
                L.A_qkv = L.B_qkv = L.A_o = L.B_o = None
                if a.memory_proj is not None:  # an adapter's low-rank corrections, float32, in 2 + 2 products
                    mp = a.memory_proj
                    A_qkv, B_q, B_k, B_v, A_o, B_o = mp.decode_weights()
                    r = mp.rank
                    Bd = torch.zeros(3 * r, (H + 2 * Hkv) * D)  # block-diagonal: low (q | k | v) → (q | k | v)
                    Bd[:r, : H * D] = B_q.T * mp.scale
                    Bd[r : 2 * r, H * D : (H + Hkv) * D] = B_k.T * mp.scale
                    Bd[2 * r :, (H + Hkv) * D :] = B_v.T * mp.scale
                    L.A_qkv, L.B_qkv = 3 * r, Bd  # A's rows ride along in the qkv product (its last 3r outputs)
                    L.A_o, L.B_o = (A_o * s["o"]).T.contiguous(), (B_o.T * mp.scale).contiguous()
                    W_qkv = torch.cat((W_qkv, A_qkv))
                    if qkv_b is not None:
                        qkv_b = torch.cat((qkv_b, qkv_b.new_zeros(3 * r)))
                L.qkv = QLinear(W_qkv * s["qkv"], qkv_b, OUTLIERS["qkv"])
                self.layers.append(L)
            self.norm = model.model.norm.weight.detach().float()
            self.eps = cfg.rms_norm_eps
            self.head_w = model.lm_head.weight.detach()
            self.head = QLinear(self.head_w)
        self.state = self._state(model)
        self._mz: dict = {}

    @staticmethod
    def _state(model: InfiniTransformer) -> tuple:
        return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in model.state_dict(keep_vars=True).values())

    @classmethod
    def current(cls, model: InfiniTransformer) -> Int8Decoder | None:
        """The model's decoder if one was made for its weights as they are."""
        d = model.__dict__.get("_int8_decoder")
        return d if d is not None and d.state == cls._state(model) else None

    @classmethod
    def for_model(cls, model: InfiniTransformer, calibration: torch.Tensor | None = None,
                  ranges: list[dict[str, torch.Tensor]] | None = None) -> Int8Decoder:
        """The model's decoder, made at the first call (`calibration`: token ids of CALIBRATION_TEXT,
        `Engine.calibration_ids`; None for a model without a tokenizer: `input_ranges`; `ranges`:
        input ranges measured before, `Engine.int8_decoder` keeps them on disk)."""
        d = cls.current(model)
        if d is None:
            with torch.inference_mode(False):
                d = cls(model, calibration, ranges)
            model.__dict__["_int8_decoder"] = d  # outside nn.Module's attribute machinery
        return d

    # ---- the step ----

    def _mzg(self, i: int, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Layer i's read as one batched product, (B·H, D, D + 1): for every query head, its key/value
        head's [g·M | z], so that σ(q)[g·M | z] gives g·(σ(q)M) beside σ(q)z. Made once per memory
        (the memory changes only when a segment is written), kept while that memory is in use."""
        key = (i, id(M), id(z))
        hit = self._mz.get(key)
        if hit is None or hit[0] is not M or hit[1] is not z:
            if len(self._mz) > 4 * len(self.layers):
                self._mz.clear()
            cfg = self.cfg
            B, Hkv, D, _ = M.shape
            G = cfg.num_attention_heads // Hkv
            scale = torch.ones(Hkv, G, 1, D + 1)
            scale[..., :D] = self.layers[i].g.view(Hkv, G, 1, D)
            mz = torch.cat((M, z.unsqueeze(-1)), -1).unsqueeze(2) * scale  # (B, Hkv, G, D, D + 1)
            hit = (M, z, mz.reshape(B * Hkv * G, D, D + 1))
            self._mz[key] = hit
        return hit[2]

    def decode(self, idx: torch.Tensor, mem: list[LayerMemory] | None,
               caches: list[SegmentCache]) -> tuple[torch.Tensor, None]:
        """`InfiniTransformer.decode` with int8 products: the final hidden state (B, 1, C) float32.

        What the token adds to each layer's memory is not computed here: its σ-input (the keys and
        values as the memory sees them) is kept in the layer's cache (`SegmentCache.keep`) and written
        in one product per segment by `settle`, which the stream calls before it uses the deltas."""
        cfg, model = self.cfg, self.model
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        HD, KD = H * D, Hkv * D
        pos = caches[0].pos
        if pos + 1 > cfg.segment_length:
            raise ValueError(f"a segment holds at most {cfg.segment_length} tokens")
        B = idx.shape[0]
        x = model.model.embed_tokens(idx).float().view(B, C)
        R = rotation(model.rope_cos[pos].float(), model.rope_sin[pos].float())
        dt, L_seg, eps = self.head_w.dtype, cfg.segment_length, self.eps
        for i, L in enumerate(self.layers):
            qkv = L.qkv(rms_norm(x, L.n1, eps))  # (B, HD + 2 KD [+ 3r]): q | k | v [| the adapter's low rank]
            if L.A_qkv is None:
                qkv_m = qkv
            else:  # as the memory sees them
                qkv, low = qkv[:, : -L.A_qkv], qkv[:, -L.A_qkv :]
                qkv_m = torch.addmm(qkv, low, L.B_qkv)
            c = caches[i]
            c.keep(qkv_m[:, HD:], L_seg)  # k, v for the memory: written by `settle`

            qk = (qkv[:, : HD + KD].reshape(B * (H + Hkv), D) @ R).view(B, H + Hkv, 1, D)  # rotary
            kc, vc = c.append(qk[:, H:].to(dt), qkv[:, HD + KD :].reshape(B, Hkv, 1, D).to(dt), L_seg)
            qr = qk[:, :H]
            if qr.dtype != kc.dtype:
                qr = qr.to(kc.dtype)
            a_dot = F.scaled_dot_product_attention(qr, kc, vc, enable_gqa=True).float()  # (B, H, 1, D)
            read = None
            if mem is None:
                a = L.one_minus_g * a_dot
            else:
                M, z = mem[i]
                sq = F.elu(qkv_m[:, :HD].reshape(B * H, 1, D)).add_(1.0)  # σ(q)
                nd = torch.bmm(sq, self._mzg(i, M, z))  # (B·H, 1, D + 1): g·σ(q)M | σ(q)z
                read = (nd[..., :D] / nd[..., D:]).view(B, H, 1, D)  # g · the memory's read
                a = torch.addcmul(read, L.one_minus_g, a_dot)
            x = x + L.o(a.view(B, HD))
            if read is not None and L.A_o is not None:
                x.addmm_(read.view(B, HD) @ L.A_o, L.B_o)
            gate, up = L.gate_up(rms_norm(x, L.n2, eps)).chunk(2, -1)
            x = x + L.down(F.silu(gate).mul_(up))
        return rms_norm(x, self.norm, eps).view(B, 1, C), None

    def settle(self, caches: list[SegmentCache], mem: list[LayerMemory] | None) -> None:
        """Write what the tokens decoded since the last call add to each layer's memory into its
        cache's (dM, dz): σ(K)ᵀV over those tokens in one product (and the delta rule's correction
        against the segment's memory, the same for all of them)."""
        cfg = self.cfg
        Hkv, D = cfg.num_key_value_heads, cfg.head_dim
        for i, c in enumerate(caches):
            rows = c.take_kept()
            if rows is None:
                continue
            B, T, _ = rows.shape
            kv = rows.view(B, T, 2, Hkv, D).permute(2, 0, 3, 1, 4)  # (2, B, Hkv, T, D)
            M, z = mem[i] if mem is not None else (None, None)
            dM, dz = memory_delta(F.elu(kv[0]) + 1.0, kv[1], M, z, cfg.memory_update)
            c.accumulate(dM, dz)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of one hidden state h (C,): the int8 head for every token, its TOPK best
        scored again with the float weights."""
        h = h.float()
        out = self.head(h.view(1, -1)).view(-1)
        top = out.topk(min(TOPK, out.numel())).indices
        out[top] = self.head_w.index_select(0, top).float() @ h
        return out
