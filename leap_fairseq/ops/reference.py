"""Naive references for the linear-attention forms in :mod:`leap_fairseq.ops.linear_attention`.

Each builds the full (N_q, N_k) score matrix q_i . k_j, masks the keys a query
may not see, and normalises by the row sum plus eps. They cost O(N_q N_k)
time and memory and exist for tests and benchmarks; the public LeaPformer code
trains with this quadratic form.
"""

from typing import Optional

import torch
from torch import Tensor

from leap_fairseq.ops.linear_attention import DEFAULT_EPS, normalize_prefix_lengths


def masked_linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, visible: Optional[Tensor] = None, eps: float = DEFAULT_EPS
) -> Tensor:
    """Quadratic linear attention with an explicit visibility mask.

    Args:
        q: (B, H, N_q, F), k: (B, H, N_k, F), v: (B, H, N_k, D_v).
        visible: bool, broadcastable to (B, H, N_q, N_k), True where query i may see key j.

    Returns:
        (B, H, N_q, D_v) in the dtype of ``q``.
    """
    scores = torch.matmul(q, k.transpose(-1, -2))
    if visible is not None:
        scores = scores.masked_fill(~visible, 0.0)
    return torch.matmul(scores, v) / (scores.sum(dim=-1, keepdim=True) + eps)


def _key_visibility(key_padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    if key_padding_mask is None:
        return None
    return ~key_padding_mask.bool()[:, None, None, :]


def _combine(first: Optional[Tensor], second: Optional[Tensor]) -> Optional[Tensor]:
    if first is None:
        return second
    if second is None:
        return first
    return first & second


def noncausal_linear_attention_reference(q, k, v, key_padding_mask=None, eps=DEFAULT_EPS):
    """Quadratic reference of :func:`noncausal_linear_attention`."""
    return masked_linear_attention_reference(q, k, v, _key_visibility(key_padding_mask), eps)


def causal_linear_attention_reference(q, k, v, eps=DEFAULT_EPS, key_padding_mask=None):
    """Quadratic reference of :func:`causal_linear_attention`: query t sees keys 0..t."""
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    return masked_linear_attention_reference(q, k, v, _combine(causal, _key_visibility(key_padding_mask)), eps)


def prefix_linear_attention_reference(q, k, v, prefix_lengths, key_padding_mask=None, eps=DEFAULT_EPS):
    """Quadratic reference of :func:`prefix_linear_attention`: query i sees keys [0, L_i)."""
    batch, _, num_queries, _ = q.shape
    num_keys = k.shape[2]
    lengths = normalize_prefix_lengths(prefix_lengths, batch, num_queries, num_keys).to(q.device)
    key_index = torch.arange(num_keys, device=q.device)
    visible = (key_index[None, None, :] < lengths[:, :, None])[:, None]
    return masked_linear_attention_reference(q, k, v, _combine(visible, _key_visibility(key_padding_mask)), eps)


def recurrent_linear_attention_reference(q, k, v, eps=DEFAULT_EPS):
    """Step-by-step reference of causal linear attention: one position at a time, explicit sums."""
    batch, heads, length, features = q.shape
    kv = q.new_zeros(batch, heads, features, v.shape[-1])
    k_sum = q.new_zeros(batch, heads, features)
    outputs = []
    for t in range(length):
        kv = kv + k[:, :, t, :, None] * v[:, :, t, None, :]
        k_sum = k_sum + k[:, :, t]
        numerator = torch.einsum("bhf,bhfd->bhd", q[:, :, t], kv)
        denominator = torch.einsum("bhf,bhf->bh", q[:, :, t], k_sum)
        outputs.append(numerator / (denominator + eps).unsqueeze(-1))
    return torch.stack(outputs, dim=2) if outputs else q.new_zeros(batch, heads, 0, v.shape[-1])
