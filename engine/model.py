"""A Llama-family decoder whose every attention layer is Infini-attention.

Read top to bottom: norm, rotary, MLP, the Infini-attention layer, the decoder block, the model.
A document flows through `segment()` one segment at a time; the per-layer memory (M, z) is carried
by the caller. `forward_train()` unrolls several segments with back-propagation through the memory.

Shapes: B batch, T tokens in the segment (or chunk), C hidden, H query heads, Hkv key/value heads,
G = H / Hkv, D head dim. Memory tensors are float32 whatever the weights' dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import kernels

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


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (length, D) in float32, in the half-split layout of Hugging Face Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    t = torch.arange(length, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (L, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, D)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


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

    def restart(self) -> None:
        self.pos, self.dM, self.dz = 0, None, None


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

    BF16_ROWS = 16  # below this many tokens (decoding) float32 products are the faster (docs/performance.md)

    @staticmethod
    def product_dtype(x: torch.Tensor) -> torch.dtype:
        """The products' dtype for x (B, T, C): float32 under gradient and for a few tokens at a time;
        otherwise the model's own (bf16 on a CPU with fast bf16 and on CUDA), as the layer's q, k and v
        are made, the sum with them still float32. Without gradient means inference, and also the
        constant segments of truncated back-propagation (`forward_train`), written as inference would."""
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


class _Body(nn.Module):
    """Holds the weights under Hugging Face's `model.` prefix."""

    def __init__(self, cfg: InfiniConfig):
        super().__init__()
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

    # ---- training: several segments, gradients through the memory ----

    def forward_train(self, idx: torch.Tensor, targets: torch.Tensor, grad_checkpoint: bool = True,
                      constant: frozenset[int] | set[int] = frozenset(),
                      repeat: dict[int, int | list[int]] | None = None, per_row: bool = False,
                      keep_activations: int = 0, teacher: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean cross-entropy over sequences of several segments, idx/targets (B, N): each row's mean
        over its scored tokens, then the mean over rows (`per_row`: the B row means themselves).
        Rows of a batch share their segments' boundaries; a shorter row is padded at its end with
        targets of -100, which its real tokens never see (causal attention, the last segment's write
        is never read).

        The memory is never detached inside the sequence, so the loss of a late segment reaches the
        weights through every earlier segment's keys and values. With `grad_checkpoint`, each
        segment's activations are recomputed in the backward pass: peak activation memory is that of
        one segment. Targets equal to -100 are ignored. `keep_activations` k: the last k segments that
        run with gradient keep their activations instead (no recomputation: the backward pass is about a
        third shorter for each, at the memory of a segment's activations each).

        `constant` (segment indices, unscored ones only) is truncated back-propagation for long
        sequences: those segments run without gradient and their writes (dM, dz) enter the memory as
        constants. The memory itself still flows through them (M_s = M_{s-1} + dM), so a key written
        before a thousand constant segments still receives the gradient of the question after them;
        what is dropped is how each constant write depends on the weights and on the memory it read.
        The loss is the same number as without it.

        `repeat` {segment index: r} (constant segments only, linear update rule) writes a constant
        segment's (dM, dz) r times: the memory a haystack of r identical segments would leave, read at
        the cost of one. It trains retrieval at the distances of a million-token haystack of repeated
        filler on a CPU; the writes of r real copies differ only by what each read of the memory before
        it changes in the layers above (nothing, while the gates below are shut). r may be a list of
        B counts, one per row.

        `teacher` {segment index: hidden states (B, T, C)}: those segments' scored tokens are trained
        toward the next-token distribution that the same vocabulary head gives for the teacher's
        hidden states (KL(teacher ‖ model), per token) instead of the token written; e.g. a model
        that read the segment with the text before it in its window (the trainer's `context_teacher`).
        """
        repeat = {i: r for i, r in (repeat or {}).items() if (r != 1 if isinstance(r, int) else any(x != 1 for x in r))}
        if repeat and not set(repeat) <= set(constant):
            raise ValueError("only constant segments can be repeated")
        if repeat and self.config.memory_update != "linear":
            raise ValueError("repeating a segment's write is exact only for the linear update rule")
        L = self.config.segment_length
        n_layers = self.config.num_hidden_layers
        mem_flat: list[torch.Tensor] = []
        total = torch.zeros(idx.shape[0], dtype=torch.float32, device=idx.device)
        count = (targets != -100).sum(dim=1)
        grad = torch.is_grad_enabled()
        runs_constant = lambda i: i in constant and (grad or i in repeat)  # noqa: E731
        differentiated = [i for i in range(-(-idx.shape[1] // L)) if not runs_constant(i)]
        kept = set(differentiated[len(differentiated) - keep_activations:]) if keep_activations > 0 else set()
        for i, s in enumerate(range(0, idx.shape[1], L)):
            args = (idx[:, s : s + L], targets[:, s : s + L], (teacher or {}).get(i), *mem_flat)
            if runs_constant(i):
                if bool((args[1] != -100).any()):
                    raise ValueError(f"segment {i} is scored: it cannot run without gradient")
                mem = list(zip(mem_flat[0::2], mem_flat[1::2])) if mem_flat else None
                with torch.no_grad():
                    _, deltas = self.segment(args[0], mem, write_only=True)
                    if i in repeat:
                        r = torch.as_tensor(repeat[i], dtype=torch.float32, device=idx.device).reshape(-1)
                        deltas = [(dM * r.view(-1, 1, 1, 1), dz * r.view(-1, 1, 1)) for dM, dz in deltas]
                mem_flat = [t for pair in add_delta(mem, deltas) for t in pair]
                continue
            if grad_checkpoint and grad and i not in kept:
                out = checkpoint(self._segment_loss, *args, use_reentrant=False)
            else:
                out = self._segment_loss(*args)
            total = total + out[0]
            mem_flat = list(out[1:])
            assert len(mem_flat) == 2 * n_layers
        rows = total / count.clamp(min=1)
        return rows if per_row else rows.mean()

    def _segment_loss(self, idx, targets, teacher, *mem_flat):
        mem = list(zip(mem_flat[0::2], mem_flat[1::2])) if mem_flat else None
        h, deltas = self.segment(idx, mem)
        scored = targets != -100
        row = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(targets)
        if not bool(scored.all()):  # the vocabulary's logits only where a token is scored (a passkey: 6 of 2,048)
            h, targets, row = h[scored], targets[scored], row[scored]
            teacher = teacher[scored] if teacher is not None else None
        C = h.shape[-1]
        per_token = head_loss(h.reshape(-1, C), self.lm_head.weight, targets.reshape(-1),
                              teacher.reshape(-1, C) if teacher is not None else None)
        loss = per_token.new_zeros(idx.shape[0]).index_add(0, row.reshape(-1), per_token)  # (B,) sums
        new = add_delta(mem, deltas)
        return (loss, *[t for pair in new for t in pair])


HEAD_CHUNK = 512  # rows of the vocabulary's logits made at a time by `head_loss`
CHUNKED_HEAD = True  # False: autograd's way whatever the head (python -m engine.train.speed --heads compares)


class _HeadLoss(torch.autograd.Function):
    """Per-token loss of the frozen vocabulary head, chunk by chunk: the loss's gradient with respect
    to the hidden states is made in the forward pass and kept (N × C), the logits never are (N × V:
    49,152 floats a token for SmolLM2, some 1.6 GB a segment of 2,048 with their softmax and casts)."""

    @staticmethod
    def forward(ctx, h, weight, targets, teacher, need_grad):
        losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_grad else None
        for s in range(0, h.shape[0], HEAD_CHUNK):
            e = min(s + HEAD_CHUNK, h.shape[0])
            logq = F.linear(h[s:e], weight).float().log_softmax(-1)
            if teacher is None:  # cross-entropy of the token written
                t = targets[s:e].unsqueeze(1)
                losses[s:e] = -logq.gather(1, t).squeeze(1)
                if need_grad:
                    g = logq.exp_().scatter_add_(1, t, torch.full_like(t, -1, dtype=logq.dtype))
            else:  # KL(teacher ‖ model) of the next-token distributions
                logp = F.linear(teacher[s:e], weight).float().log_softmax(-1)
                p = logp.exp()
                losses[s:e] = (p * (logp - logq)).sum(-1)
                if need_grad:
                    g = logq.exp_().sub_(p)
            if need_grad:
                grad[s:e] = g.to(h.dtype) @ weight  # as autograd would: the logits' gradient in h's dtype
        ctx.save_for_backward(grad)
        ctx.h_dtype = h.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        return (grad_losses.unsqueeze(1) * grad).to(ctx.h_dtype), None, None, None, None


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token loss (N,) of hidden states h (N, C) through the vocabulary head `weight` (V, C):
    the cross-entropy of `targets` (N,), or with `teacher` hidden states (N, C) KL(teacher ‖ model)
    of the two next-token distributions, the teacher's made by the same head. With the head frozen
    (training changes attention only) the gradient reaches h alone and the logits are made a chunk at
    a time, never kept for the backward pass; a head that trains (a test's model) takes autograd's
    way, every logit kept."""
    if teacher is not None:
        teacher = teacher.detach().to(h.dtype)
    if torch.is_grad_enabled() and (weight.requires_grad or not CHUNKED_HEAD):
        logq = F.linear(h, weight).float().log_softmax(-1)
        if teacher is None:
            return F.nll_loss(logq, targets, reduction="none")
        with torch.no_grad():
            logp = F.linear(teacher, weight).float().log_softmax(-1)
        return (logp.exp() * (logp - logq)).sum(-1)
    return _HeadLoss.apply(h, weight, targets, teacher, torch.is_grad_enabled() and h.requires_grad)
