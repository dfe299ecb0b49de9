"""Decoding one token on the CPU with int8 weights: answers stream faster, reading is untouched.

A decoded token reads every weight of the model once (about 540 MB in float32 for the built-in
model) for a few hundred one-row products, so its speed is the memory's bandwidth and the number of
small operations. This module prepares, once per set of weights, what the one-token step needs:

- every layer's products as fbgemm int8 matrices (per output channel, from the weights as loaded),
  run by PyTorch's dynamic int8 linear (the activation row quantized on the fly), with q/k/v fused
  into one product and gate/up into another: a quarter of the bytes and 4 products per layer
  instead of 7;
- the vocabulary head in int8 as a shortlist: its TOPK best candidates are scored again exactly
  with the float weights, so the greedy token is the float head's whenever the float winner is
  among the int8 head's TOPK (tested on the built-in model);
- rotary as one small product per layer with a (D, D) rotation made once per token, RMSNorm as one
  operation, the memory read as one product against [M | z].

What stays float32: the memory path (σ(K), σ(Q), the read M / z and what the token adds to the
memory), attention over the segment's cache, norms, residuals. Prompts go through
`InfiniTransformer.segment` as always, and reading a document (`Engine.ingest`) never comes here,
so the memories stored for books are exactly those of the float model: the model's fingerprint does
not change. Only the answer's tokens are decoded here; the memory handed to `generate(on_memory=)`
includes them as this path computed them.

Choice: `INFINI_DECODE` = auto (default) | int8 | exact, or `generate(decode=...)`. Auto is the exact
path for now: on the built-in model this path's held-out perplexity is 1.7% above the exact one's,
over the 1% a default may cost (docs/performance.md has the measurements); int8 is opt-in.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from .model import InfiniTransformer, LayerMemory, SegmentCache

DECODE_ENV = "INFINI_DECODE"
MODES = ("auto", "int8", "exact")
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
    if m == "auto":  # not int8 yet: held-out perplexity +1.7% (docs/performance.md), over the 1% allowed
        return "exact"
    return m


class QLinear:
    """y = x Wᵀ (+ b) with W (out, in) in int8, one scale per output row, activations quantized per
    row on the fly (fbgemm). reduce_range: 7-bit activations, so that no pair of u8 × s8 products
    overflows 16 bits on CPUs without VNNI."""

    __slots__ = ("packed",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in favour of torchao
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


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


class _Layer:
    __slots__ = ("n1", "n2", "qkv", "o", "gate_up", "down", "g", "one_minus_g", "proj")


class Int8Decoder:
    """The one-token step of an `InfiniTransformer` with int8 products (see the module's text).

    Made by `for_model`, which keeps one per model and makes it again when a weight changes."""

    def __init__(self, model: InfiniTransformer):
        cfg = self.cfg = model.config
        self.model = model
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.split = (H * D, Hkv * D, Hkv * D)
        self.layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                L = _Layer()
                L.n1 = layer.input_layernorm.weight.detach().float()
                L.n2 = layer.post_attention_layernorm.weight.detach().float()
                qkv_b = None
                if a.q_proj.bias is not None:
                    qkv_b = torch.cat((a.q_proj.bias, a.k_proj.bias, a.v_proj.bias))
                L.qkv = QLinear(torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)), qkv_b)
                L.o = QLinear(a.o_proj.weight, a.o_proj.bias)
                L.gate_up = QLinear(torch.cat((m.gate_proj.weight, m.up_proj.weight)))
                L.down = QLinear(m.down_proj.weight)
                g = torch.sigmoid(a.memory_gate.detach().float()).view(1, H, 1, 1)
                L.g, L.one_minus_g = g, 1 - g
                L.proj = None
                if a.memory_proj is not None:
                    mp = a.memory_proj
                    A_qkv, B_q, B_k, B_v, A_o, B_o = mp.decode_weights()
                    L.proj = (A_qkv, B_q * mp.scale, B_k * mp.scale, B_v * mp.scale, A_o, B_o * mp.scale, mp.rank)
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
    def for_model(cls, model: InfiniTransformer) -> Int8Decoder:
        d = model.__dict__.get("_int8_decoder")
        if d is None or d.state != cls._state(model):
            with torch.inference_mode(False):
                d = cls(model)
            model.__dict__["_int8_decoder"] = d  # outside nn.Module's attribute machinery
        return d

    # ---- the step ----

    def _mz_of(self, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[M | z] (B, Hkv, 1, D, D + 1): the read's numerator and denominator in one product."""
        key = (id(M), id(z))
        hit = self._mz.get(key)
        if hit is None or hit[0] is not M:
            if len(self._mz) > 4 * len(self.layers):
                self._mz.clear()
            hit = (M, z, torch.cat((M, z.unsqueeze(-1)), -1).unsqueeze(2))
            self._mz[key] = hit
        return hit[2]

    def decode(self, idx: torch.Tensor, mem: list[LayerMemory] | None,
               caches: list[SegmentCache]) -> tuple[torch.Tensor, list[LayerMemory]]:
        """`InfiniTransformer.decode` with int8 products: final hidden state (B, 1, C) float32 and
        each layer's (dM, dz)."""
        cfg, model = self.cfg, self.model
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        G = H // Hkv
        pos = caches[0].pos
        if pos + 1 > cfg.segment_length:
            raise ValueError(f"a segment holds at most {cfg.segment_length} tokens")
        B = idx.shape[0]
        x = model.model.embed_tokens(idx).float()  # (B, 1, C)
        R = rotation(model.rope_cos[pos].float(), model.rope_sin[pos].float())
        deltas = []
        rule, dt = cfg.memory_update, self.head_w.dtype
        for i, L in enumerate(self.layers):
            M, z = mem[i] if mem is not None else (None, None)
            h = F.rms_norm(x, (C,), L.n1, self.eps)
            q, k, v = L.qkv(h).split(self.split, -1)  # (B, 1, H*D), (B, 1, Hkv*D) × 2
            q, k, v = q.view(B, H, 1, D), k.view(B, Hkv, 1, D), v.view(B, Hkv, 1, D)
            q_m, k_m, v_m = q, k, v
            if L.proj is not None:
                A_qkv, B_q, B_k, B_v, A_o, B_o, r = L.proj
                low = F.linear(h, A_qkv).split(r, -1)
                q_m = q + F.linear(low[0], B_q).view(q.shape)
                k_m = k + F.linear(low[1], B_k).view(k.shape)
                v_m = v + F.linear(low[2], B_v).view(v.shape)
            sk = F.elu(k_m) + 1.0  # σ(K) (B, Hkv, 1, D)
            if rule == "delta" and M is not None:
                v_m = v_m - (sk @ M) / (sk @ z.unsqueeze(-1))
            deltas.append((sk.transpose(-1, -2) @ v_m, sk.view(B, Hkv, D)))

            c = caches[i]
            qk = (torch.cat((q, k), 1).view(B * (H + Hkv), D) @ R).view(B, H + Hkv, 1, D)
            kc, vc = c.append(qk[:, H:].to(dt), v.to(dt), cfg.segment_length)  # the cache in the model's dtype
            qr = qk[:, :H]
            if qr.dtype != kc.dtype:
                qr = qr.to(kc.dtype)
            a_dot = F.scaled_dot_product_attention(qr, kc, vc, enable_gqa=True).float()  # (B, H, 1, D)
            read = None
            if M is None:
                a = L.one_minus_g * a_dot
            else:
                sq = (F.elu(q_m) + 1.0).view(B, Hkv, G, 1, D)
                nd = sq @ self._mz_of(M, z)  # (B, Hkv, G, 1, D + 1)
                read = (nd[..., :D] / nd[..., D:]).view(B, H, 1, D) * L.g
                a = torch.addcmul(read, L.one_minus_g, a_dot)
            out = L.o(a.view(B, 1, H * D))
            if read is not None and L.proj is not None:
                out = out + F.linear(F.linear(read.view(B, 1, H * D), A_o), B_o)
            x = x + out
            h = F.rms_norm(x, (C,), L.n2, self.eps)
            gu = L.gate_up(h)
            gate, up = gu.chunk(2, -1)
            x = x + L.down(F.silu(gate) * up)
        return F.rms_norm(x, (C,), self.norm, self.eps), deltas

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of one hidden state h (C,): the int8 head for every token, its TOPK best
        scored again with the float weights."""
        h = h.float()
        out = self.head(h.view(1, -1)).view(-1)
        top = out.topk(min(TOPK, out.numel())).indices
        out[top] = self.head_w.index_select(0, top).float() @ h
        return out
