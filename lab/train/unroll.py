"""Training through the memory: several segments unrolled, gradients through M and z.

`forward_train(model, idx, targets)` is the loss of a sequence of several segments; the model's own
`segment()` does the work, so training and inference run the same maths (DESIGN.md §3, fact 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from infini_reader.engine.model import InfiniTransformer, add_delta


def forward_train(model: InfiniTransformer, idx: torch.Tensor, targets: torch.Tensor, grad_checkpoint: bool = True,
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
    if repeat and model.config.memory_update != "linear":
        raise ValueError("repeating a segment's write is exact only for the linear update rule")
    L = model.config.segment_length
    n_layers = model.config.num_hidden_layers
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
                _, deltas = model.segment(args[0], mem, write_only=True)
                if i in repeat:
                    r = torch.as_tensor(repeat[i], dtype=torch.float32, device=idx.device).reshape(-1)
                    deltas = [(dM * r.view(-1, 1, 1, 1), dz * r.view(-1, 1, 1)) for dM, dz in deltas]
            mem_flat = [t for pair in add_delta(mem, deltas) for t in pair]
            continue
        if grad_checkpoint and grad and i not in kept:
            out = checkpoint(_segment_loss, model, *args, use_reentrant=False)
        else:
            out = _segment_loss(model, *args)
        total = total + out[0]
        mem_flat = list(out[1:])
        assert len(mem_flat) == 2 * n_layers
    rows = total / count.clamp(min=1)
    return rows if per_row else rows.mean()

def _segment_loss(model: InfiniTransformer, idx, targets, teacher, *mem_flat):
    mem = list(zip(mem_flat[0::2], mem_flat[1::2])) if mem_flat else None
    h, deltas = model.segment(idx, mem)
    scored = targets != -100
    row = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(targets)
    if not bool(scored.all()):  # the vocabulary's logits only where a token is scored (a passkey: 6 of 2,048)
        h, targets, row = h[scored], targets[scored], row[scored]
        teacher = teacher[scored] if teacher is not None else None
    C = h.shape[-1]
    per_token = head_loss(h.reshape(-1, C), model.lm_head.weight, targets.reshape(-1),
                          teacher.reshape(-1, C) if teacher is not None else None)
    loss = per_token.new_zeros(idx.shape[0]).index_add(0, row.reshape(-1), per_token)  # (B,) sums
    new = add_delta(mem, deltas)
    return (loss, *[t for pair in new for t in pair])


HEAD_CHUNK = 512  # rows of the vocabulary's logits made at a time by `head_loss`
CHUNKED_HEAD = True  # False: autograd's way whatever the head (python -m lab.train.speed --heads compares)


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
