"""A Llama-family decoder whose every attention layer is Infini-attention.

Read top to bottom: norm, rotary, MLP, the Infini-attention layer, the decoder block, the model.
A document flows through `segment()` one segment at a time; the per-layer memory (M, z) is carried
by the caller. Training unrolls several segments over this same `segment()`, with gradients
through the memory (the lab's `unroll` module).

Shapes: B batch, T tokens in the segment (or chunk), C hidden, H query heads, Hkv key/value heads,
G = H / Hkv, D head dim. Memory tensors are float32 whatever the weights' dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infini_reader import kernels
from infini_reader.kernels.reference import apply_rotary, rotary_tables

from .config import InfiniConfig
from .memory import memory_delta, memory_retrieve, sigma

# Per layer: (M (B, Hkv, D, D), z (B, Hkv, D)); None for an empty memory (nothing written yet).
LayerMemory = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class MLP(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class SegmentCache:
    """Key/value cache of the *current segment* of one layer, for generation.

    Keys are stored after rotary (they serve local attention only), in buffers of one segment's
    length allocated once. What the segment will add to the memory is accumulated in dM/dz chunk by
    chunk and written into the memory once, when the segment is full.
    """

    k: torch.Tensor | None = None  # (B, Hkv, L, D), rotary applied; valid up to pos
    v: torch.Tensor | None = None  # (B, Hkv, L, D)
    pos: int = 0
    dM: torch.Tensor | None = None
    dz: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            B, Hkv, _, D = k.shape
            self.k = k.new_empty(B, Hkv, length, D)
            self.v = v.new_empty(B, Hkv, length, D)
        T = k.shape[2]
        self.k[:, :, self.pos : self.pos + T] = k
        self.v[:, :, self.pos : self.pos + T] = v
        self.pos += T
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]

    def accumulate(self, dM: torch.Tensor, dz: torch.Tensor) -> None:
        self.dM = dM if self.dM is None else self.dM + dM
        self.dz = dz if self.dz is None else self.dz + dz

    # Rows kept for a later memory write (engine/quant.py decodes without writing each token's delta):
    kept: torch.Tensor | None = None  # (B, L, width), one segment's buffer
    kept_from: int = 0  # rows kept_from .. kept_to are waiting
    kept_to: int = 0

    def keep(self, row: torch.Tensor, length: int) -> None:
        """Keep row (B, width) for the token at `pos` (before `append` moves it on)."""
        if self.kept is None or self.kept.shape[0] != row.shape[0] or self.kept.shape[2] != row.shape[1]:
            self.kept = row.new_empty(row.shape[0], length, row.shape[1])
        if self.kept_to == self.kept_from:
            self.kept_from = self.pos
        elif self.kept_to != self.pos:
            raise RuntimeError("kept rows must be consecutive tokens")
        self.kept[:, self.pos] = row
        self.kept_to = self.pos + 1

    def take_kept(self) -> torch.Tensor | None:
        """The rows kept since the last call (B, n, width), or None."""
        if self.kept_to == self.kept_from:
            return None
        rows = self.kept[:, self.kept_from : self.kept_to]
        self.kept_from = self.kept_to
        return rows

    def restart(self) -> None:
        if self.kept_to != self.kept_from:
            raise RuntimeError("a segment restarted with kept rows not written into its memory")
        self.pos, self.dM, self.dz = 0, None, None
        self.kept_from = self.kept_to = 0


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos0: int) -> torch.Tensor:
    """Causal softmax attention of queries at positions pos0.. over keys 0..pos0+T-1.

    q (B, H, T, D), k/v (B, Hkv, pos0 + T, D) → (B, H, T, D). On a GPU this is PyTorch's fused
    scaled-dot-product attention. On the CPU the fused kernel reaches a fraction of the bf16 matrix
    peak (AMX), so long chunks go through `blocked_attention` instead; both are tested equal.
    """
    T = q.shape[2]
    if q.device.type == "cpu" and T >= 256:
        return blocked_attention(q, k, v, pos0)
    if pos0 == 0 or T == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
    mask = torch.ones(T, pos0 + T, dtype=torch.bool, device=q.device).tril(pos0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@functools.lru_cache(maxsize=16)
def _upper_mask(n: int, device: torch.device) -> torch.Tensor:
    """(n, n) True above the diagonal: the keys a query block may not see in its own block.

    Made outside inference mode even when first asked for inside it, so that the cached tensor also
    serves training (an inference tensor cannot take part in autograd)."""
    with torch.inference_mode(False):
        return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos0: int = 0, block: int = 256) -> torch.Tensor:
    """Causal attention as two batched matrix products per block of queries, all query heads of a
    key/value head stacked into one product, the softmax a single pass. Keys beyond a block's end are
    never touched, so the work is causal (about half of the full square)."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    qs = (q * D**-0.5).view(B, Hkv, G, T, D)  # (B, Hkv, G, T, D)
    kT = k.transpose(-1, -2).contiguous()  # (B, Hkv, D, S): row-major for the score products
    out = q.new_empty(B, Hkv, G, T, D)
    for s0 in range(0, T, block):
        e = min(s0 + block, T)
        n, end = e - s0, pos0 + e
        qb = qs[:, :, :, s0:e].reshape(B, Hkv, G * n, D)  # (B, Hkv, G*n, D)
        scores = (qb @ kT[..., :end]).view(B, Hkv, G, n, end)
        scores[..., pos0 + s0 : end].masked_fill_(_upper_mask(n, q.device), float("-inf"))
        p = torch.softmax(scores, dim=-1).view(B, Hkv, G * n, end)
        out[:, :, :, s0:e] = (p @ v[:, :, :end]).view(B, Hkv, G, n, D)
    return out.view(B, H, T, D)


class MemoryProjection(nn.Module):
    """Low-rank corrections that only the memory path sees: the q, k and v it reads and writes with,
    and the output projection of what it reads (o acts on g·A_mem + (1 − g)·A_dot linearly, so its
    memory part can take its own correction). Q, K and V are still the layer's, made from the same
    input; the correction (rank r, scale α/r, float32; without gradient, for 16 tokens or more, its
    products run in the model's dtype, like the layer's own) is part of an adapter, like LoRA, but never
    merged: the local attention keeps the layer's own projections, so a model that learns to read
    its memory this way answers exactly as before whenever the memory holds nothing (up to each
    head's 1 − sigmoid(β)). Zero at first: a model with it computes what one without it does."""

    def __init__(self, cfg: InfiniConfig, rank: int, alpha: float):
        super().__init__()
        C, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        for name, (n_in, n_out) in {"q": (C, H * D), "k": (C, Hkv * D), "v": (C, Hkv * D), "o": (H * D, C)}.items():
            setattr(self, f"{name}_A", nn.Parameter(torch.zeros(rank, n_in)))
            setattr(self, f"{name}_B", nn.Parameter(torch.zeros(n_out, rank)))

    def delta(self, name: str, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x (..., in) → the correction (..., out), float32; the two thin products run in `dtype`."""
        A, B = getattr(self, f"{name}_A"), getattr(self, f"{name}_B")
        return F.linear(F.linear(x.to(dtype), A.to(dtype)), B.to(dtype)).float() * self.scale

    def heads(self, name: str, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """t (B, heads, T, D) as the memory sees it: t + the correction of x (B, T, C), float32."""
        B, T, _ = x.shape
        return t.float() + self.delta(name, x, dtype).view(B, T, t.shape[1], t.shape[3]).transpose(1, 2)

    def decode_weights(self) -> tuple[torch.Tensor, ...]:
        """(A_q, A_k, A_v stacked (3r, C), B_q, B_k, B_v, A_o, B_o), float32, for decoding one token:
        made again only when a parameter changes, where a model cast to bf16 would convert them for
        every token of every layer."""
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in self.parameters())
        if getattr(self, "_decode_key", None) != key:
            f = {n: p.detach().float() for n, p in self.named_parameters()}
            self._decode_weights = (torch.cat((f["q_A"], f["k_A"], f["v_A"])), f["q_B"], f["k_B"], f["v_B"],
                                    f["o_A"], f["o_B"])
            self._decode_key = key
        return self._decode_weights

    BF16_ROWS = 16  # below this many tokens (decoding) float32 products are the faster (docs/performance.md)

    @staticmethod
    def product_dtype(x: torch.Tensor) -> torch.dtype:
        """The products' dtype for x (B, T, C): float32 under gradient and for a few tokens at a time;
        otherwise the model's own (bf16 on a CPU with fast bf16 and on CUDA), as the layer's q, k and v
        are made, the sum with them still float32. Without gradient means inference, and also the
        constant segments of truncated back-propagation in training, written as inference would."""
        return torch.float32 if torch.is_grad_enabled() or x.shape[-2] < MemoryProjection.BF16_ROWS else x.dtype


class InfiniAttention(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.cfg = cfg
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.q_proj = nn.Linear(C, H * D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(C, Hkv * D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(C, Hkv * D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * D, C, bias=cfg.o_bias)
        # β, one per query head; sigmoid(β) is the weight of the memory read.
        self.memory_gate = nn.Parameter(torch.full((H,), cfg.memory_gate_init))
        self.memory_proj: MemoryProjection | None = None  # an adapter's, when it has one

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, -1, self.cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, -1, self.cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        return k, v

    def write_only(self, x: torch.Tensor, mem: LayerMemory | None) -> LayerMemory:
        """The segment's contribution to the memory, without computing the layer's output."""
        k, v = self._kv(x)
        M, z = mem if mem is not None else (None, None)
        mp = self.memory_proj
        if mp is not None:
            pd = mp.product_dtype(x)
            k, v = mp.heads("k", x, k, pd), mp.heads("v", x, v, pd)
        return memory_delta(sigma(k.float()), v.float(), M, z, self.cfg.memory_update)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mem: LayerMemory | None,
        cache: SegmentCache | None = None,
    ) -> tuple[torch.Tensor, LayerMemory]:
        """x (B, T, C) → (output (B, T, C), (dM, dz) this chunk adds to the memory).

        cos/sin hold the rotary tables of this chunk's positions inside its segment.
        """
        B, T, _ = x.shape
        H, D = self.cfg.num_attention_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k, v = self._kv(x)  # (B, Hkv, T, D)
        M, z = mem if mem is not None else (None, None)

        mp = self.memory_proj
        if mp is None and kernels.fused_applies(x, D):  # CUDA (or INFINI_KERNELS=triton): the fused Triton kernels
            dM, dz = kernels.write_memory(k, v, M, z, self.cfg.memory_update)  # σ inside, pre-rotary k
            k_r, pos0 = apply_rotary(k, cos, sin), 0
            if cache is not None:
                pos0 = cache.pos
                k_r, v = cache.append(k_r, v, self.cfg.segment_length)  # (B, Hkv, pos0 + T, D)
            a = kernels.segment_attention(q, k_r, v, M, z, self.memory_gate, cos, sin, pos0)  # (B, H, T, D)
            return self.o_proj(a.transpose(1, 2).reshape(B, T, H * D)), (dM, dz)

        # Memory path: queries and keys *before* rotary, so no position enters M; float32.
        pd = mp.product_dtype(x) if mp is not None else None
        k_m, v_m = (k, v) if mp is None else (mp.heads("k", x, k, pd), mp.heads("v", x, v, pd))
        dM, dz = memory_delta(sigma(k_m.float()), v_m.float(), M, z, self.cfg.memory_update)

        # Local path: causal softmax attention inside the segment, with rotary.
        q_r = apply_rotary(q, cos, sin)
        k_r = apply_rotary(k, cos, sin)
        pos0 = 0
        if cache is not None:
            pos0 = cache.pos
            k_r, v = cache.append(k_r, v, self.cfg.segment_length)  # (B, Hkv, pos0 + T, D)
        a_dot = local_attention(q_r, k_r, v, pos0)  # (B, H, T, D)

        g = torch.sigmoid(self.memory_gate.float()).view(1, H, 1, 1)
        if M is None:  # empty memory: the retrieval is zero (not 0/0)
            a = ((1 - g) * a_dot.float()).to(x.dtype)
        else:
            q_m = q if mp is None else mp.heads("q", x, q, pd)
            read = g * memory_retrieve(sigma(q_m.float()), M, z)  # (B, H, T, D)
            a = (read + (1 - g) * a_dot.float()).to(x.dtype)
        y = a.transpose(1, 2).reshape(B, T, H * D)  # heads back beside each other: (B, T, H*D)
        out = self.o_proj(y)
        if mp is not None and M is not None:
            out = out + mp.delta("o", read.transpose(1, 2).reshape(B, T, H * D), pd).to(out.dtype)
        return out, (dM, dz)

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mem: LayerMemory | None,
               cache: SegmentCache) -> tuple[torch.Tensor, LayerMemory]:
        """`forward` for one new token x (B, 1, C) against the segment's cache: the same maths, in
        fewer operations. A token's few hundred small products cost about as much in dispatch as in
        arithmetic, so views replace transposes (with T = 1 a (B, 1, H*D) row is already (B, H, 1, D))
        and q and k are rotated in one pass. Tested equal to `forward` (tests/engine/test_generate.py)."""
        B = x.shape[0]
        H, Hkv, D = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, H, 1, D)
        k = self.k_proj(x).view(B, Hkv, 1, D)
        v = self.v_proj(x).view(B, Hkv, 1, D)
        M, z = mem if mem is not None else (None, None)

        # Memory path, pre-rotary and float32; an adapter's low-rank corrections in float32 (one row),
        # the three A products as one.
        mp = self.memory_proj
        q_m, k_m, v_m = q, k, v
        if mp is not None:
            A_qkv, B_q, B_k, B_v, A_o, B_o = mp.decode_weights()
            low = F.linear(x.float(), A_qkv).split(mp.rank, -1)  # 3 × (B, 1, r)
            q_m, k_m, v_m = (t.float() + (F.linear(a, w) * mp.scale).view(t.shape)
                             for t, a, w in zip((q, k, v), low, (B_q, B_k, B_v)))
        dM, dz = memory_delta(sigma(k_m.float()), v_m.float(), M, z, self.cfg.memory_update)

        # Local path: rotary on q and k together, the new key and value into the cache, attention.
        qk = apply_rotary(torch.cat((q, k), 1), cos, sin)  # (B, H + Hkv, 1, D)
        k_r, v = cache.append(qk[:, H:], v, self.cfg.segment_length)  # (B, Hkv, pos + 1, D)
        a_dot = F.scaled_dot_product_attention(qk[:, :H], k_r, v, enable_gqa=True)  # (B, H, 1, D)

        g = torch.sigmoid(self.memory_gate.float()).view(1, H, 1, 1)
        if M is None:
            read, a = None, ((1 - g) * a_dot.float()).to(x.dtype)
        else:
            read = g * memory_retrieve(sigma(q_m.float()), M, z)  # (B, H, 1, D)
            a = (read + (1 - g) * a_dot.float()).to(x.dtype)
        out = self.o_proj(a.view(B, 1, H * D))  # heads side by side, as forward's transpose gives them
        if read is not None and mp is not None:
            out = out + (F.linear(F.linear(read.view(B, 1, H * D), A_o), B_o) * mp.scale).to(out.dtype)
        return out, (dM, dz)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.self_attn = InfiniAttention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mem, cache=None):
        a, delta = self.self_attn(self.input_layernorm(x), cos, sin, mem, cache)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, delta

    def decode(self, x, cos, sin, mem, cache):
        a, delta = self.self_attn.decode(self.input_layernorm(x), cos, sin, mem, cache)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, delta


class _Body(nn.Module):
    """Holds the weights under Hugging Face's `model.` prefix."""

    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        if torch.empty(0).is_meta:  # built to be loaded (torch.device("meta")): Embedding's own random
            # init there goes through PyTorch's Python decompositions, whose import took 1.5 s of a 1.8 s load
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                             _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        else:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def add_delta(mem: list[LayerMemory] | None, deltas: list[LayerMemory]) -> list[LayerMemory]:
    """Write a segment's (dM, dz) into the memory: M_s = M_{s-1} + dM, z_s = z_{s-1} + dz."""
    if mem is None:
        return list(deltas)
    return [(M + dM, z + dz) for (M, z), (dM, dz) in zip(mem, deltas)]


class InfiniTransformer(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.config = cfg
        self.model = _Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if torch.empty(0).is_meta:  # to be loaded: the tables are made on the real device then (as above)
            cos, sin = torch.empty(cfg.segment_length, cfg.head_dim), torch.empty(cfg.segment_length, cfg.head_dim)
        else:
            cos, sin = rotary_tables(cfg.head_dim, cfg.segment_length, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @classmethod
    def for_loading(cls, cfg: InfiniConfig) -> InfiniTransformer:
        """A model whose weights are about to be loaded: allocated, not randomly initialised (that
        costs seconds for large models). Memory gates get their initial value, since plain
        checkpoints do not hold them."""
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device="cpu")
        if cfg.tie_word_embeddings:  # to_empty gives each module its own tensor: tie them again
            model.lm_head.weight = model.model.embed_tokens.weight
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.memory_gate.fill_(cfg.memory_gate_init)
        model.rope_cos, model.rope_sin = rotary_tables(cfg.head_dim, cfg.segment_length, cfg.rope_theta)
        return model

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ---- one segment ----

    def segment(
        self,
        idx: torch.Tensor,
        mem: list[LayerMemory] | None,
        caches: list[SegmentCache] | None = None,
        write_only: bool = False,
    ) -> tuple[torch.Tensor | None, list[LayerMemory]]:
        """Run tokens idx (B, T) of one segment (or the next chunk of it, with caches).

        Returns the final hidden states (B, T, C) after the last norm and, per layer, (dM, dz) that
        this chunk adds to the memory. `write_only` skips everything not needed for the memory
        (the last layer's attention output and MLP, the final norm) and returns None for hidden.
        """
        T = idx.shape[1]
        pos0 = caches[0].pos if caches else 0
        if pos0 + T > self.config.segment_length:
            raise ValueError(f"a segment holds at most {self.config.segment_length} tokens")
        x = self.model.embed_tokens(idx)
        cos = self.rope_cos[pos0 : pos0 + T].to(x.dtype)
        sin = self.rope_sin[pos0 : pos0 + T].to(x.dtype)
        deltas = []
        layers = self.model.layers
        for i, layer in enumerate(layers):
            m = mem[i] if mem is not None else None
            if write_only and i == len(layers) - 1:
                deltas.append(layer.self_attn.write_only(layer.input_layernorm(x), m))
                return None, deltas
            x, d = layer(x, cos, sin, m, caches[i] if caches else None)
            deltas.append(d)
        return self.model.norm(x), deltas

    def decode(self, idx: torch.Tensor, mem: list[LayerMemory] | None,
               caches: list[SegmentCache]) -> tuple[torch.Tensor, list[LayerMemory]]:
        """`segment` for one new token per row, idx (B, 1), on the PyTorch path: the final hidden
        state (B, 1, C) and each layer's (dM, dz). Where the fused kernels apply (CUDA), `segment`."""
        x = self.model.embed_tokens(idx)
        if kernels.fused_applies(x, self.config.head_dim):
            return self.segment(idx, mem, caches)
        pos = caches[0].pos
        if pos + 1 > self.config.segment_length:
            raise ValueError(f"a segment holds at most {self.config.segment_length} tokens")
        cos = self.rope_cos[pos : pos + 1].to(x.dtype)
        sin = self.rope_sin[pos : pos + 1].to(x.dtype)
        deltas = []
        for i, layer in enumerate(self.model.layers):
            x, d = layer.decode(x, cos, sin, mem[i] if mem is not None else None, caches[i])
            deltas.append(d)
        return self.model.norm(x), deltas
