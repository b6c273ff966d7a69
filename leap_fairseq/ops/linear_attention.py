"""Linear attention on feature-mapped queries and keys: the fast forms.

Every function takes queries ``q`` and keys ``k`` that a feature map has
already turned into non-negative features, shaped (B, H, N, F), and values
``v`` shaped (B, H, N, D_v). The output for query i is

    out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + eps)

over the keys j that query i may see. States and sums accumulate in float32
(float64 when the inputs are float64) whatever the input dtype, with autocast
switched off inside, and the output has the dtype of ``q``.

The naive quadratic forms in :mod:`leap_fairseq.ops.reference` compute the
same values and serve as the references in the tests.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Added to every denominator so that a query whose features are all zero (or a
# query that sees no key) gets a finite output, namely 0.
DEFAULT_EPS = 1e-6

# Chunk length of the causal form; the result does not depend on it. With
# 64-dimensional heads and 128 features, 64 was the fastest of 32, 64 and 128
# (or within noise of it) from N = 2048 to 16384 on a 2-core AVX-512 machine
# (scripts/bench_attention.py --chunk-sizes, docs/benchmarks.md).
DEFAULT_CHUNK_SIZE = 64

# The methods of the offline causal and prefix forms. "chunked" is O(N) in time and
# memory, and "quadratic" builds the masked (N_q, N_k) score matrix. "auto" takes
# the quadratic form while N_q * N_k stays at or below the limit of the form.
# Below these limits the quadratic form was faster, forward plus backward, with
# 4 heads, 64 features, 32 value dimensions and one thread on the 2-core
# development machine: at 50 positions (a 2 s utterance after subsampling) 1.8
# times for causal and 5.9 times for prefix, which merges queries and keys into one
# sequence twice as long (scripts/bench_short_attention.py, docs/benchmarks.md).
# NOTE: the limits were measured on CPU only; other hardware may cross elsewhere.
METHODS = ("auto", "chunked", "quadratic")
QUADRATIC_MAX_PAIRS_CAUSAL = 96 * 96
QUADRATIC_MAX_PAIRS_PREFIX = 256 * 256


@dataclass
class LinearAttentionState:
    """Summed key state of causal or streaming linear attention.

    Attributes:
        kv: (B, H, F, D_v), the sum of outer products phi(k_j)^T v_j.
        k_sum: (B, H, F), the sum of phi(k_j).

    Both are float32, or float64 when the inputs were float64.
    """

    kv: Tensor
    k_sum: Tensor

    @classmethod
    def zeros(
        cls,
        batch_size: int,
        num_heads: int,
        feature_dim: int,
        value_dim: int,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> "LinearAttentionState":
        """Return the empty state (no key seen yet)."""
        dtype = accumulation_dtype(dtype)
        return cls(
            kv=torch.zeros(batch_size, num_heads, feature_dim, value_dim, device=device, dtype=dtype),
            k_sum=torch.zeros(batch_size, num_heads, feature_dim, device=device, dtype=dtype),
        )

    def index_select(self, order: Tensor) -> "LinearAttentionState":
        """Return the state of the batch rows in ``order`` (beam search reordering)."""
        return LinearAttentionState(self.kv.index_select(0, order), self.k_sum.index_select(0, order))

    def detach(self) -> "LinearAttentionState":
        return LinearAttentionState(self.kv.detach(), self.k_sum.detach())


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype that states and sums accumulate in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_disabled(device_type: str):
    """Return a context that switches autocast off on ``device_type``."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, same_length: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "linear attention expects q, k of shape (B, H, N, F) and v of shape (B, H, N, D_v); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            "q, k and v must agree in batch and heads, k and v in length, q and k in features; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if same_length and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys, got {q.shape[2]} and {k.shape[2]}"
        )


def _zero_padded_keys(k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Zero the features and values of padded keys so that they contribute nothing."""
    if key_padding_mask is None:
        return k, v
    if key_padding_mask.shape != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"key_padding_mask must have shape (B, N_k) = {(k.shape[0], k.shape[2])}, "
            f"got {tuple(key_padding_mask.shape)}"
        )
    padded = key_padding_mask.to(device=k.device, dtype=torch.bool)[:, None, :, None]
    return k.masked_fill(padded, 0.0), v.masked_fill(padded, 0.0)


def _takes_quadratic(method: str, pairs: int, limit: int) -> bool:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method == "quadratic" or (method == "auto" and pairs <= limit)


def _quadratic(q: Tensor, k: Tensor, v: Tensor, visible: Optional[Tensor], causal: bool, eps: float) -> Tensor:
    """Masked quadratic linear attention; ``visible`` is bool, broadcastable to (B, H, N_q, N_k)."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    if causal:
        scores = scores.tril()
    if visible is not None:
        scores = scores.masked_fill(~visible, 0.0)
    return torch.matmul(scores, v) / (scores.sum(dim=-1, keepdim=True) + eps)


def noncausal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Attend every query to every (non-padded) key.

    Args:
        q: (B, H, N_q, F) query features.
        k: (B, H, N_k, F) key features.
        v: (B, H, N_k, D_v) values.
        key_padding_mask: optional (B, N_k) bool, True where the key is padding.

    Returns:
        (B, H, N_q, D_v) in the dtype of ``q``.
    """
    _check_qkv(q, k, v, same_length=False)
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    with autocast_disabled(q.device.type):
        q, k, v = q.to(acc), k.to(acc), v.to(acc)
        k, v = _zero_padded_keys(k, v, key_padding_mask)
        kv = torch.matmul(k.transpose(-1, -2), v)
        k_sum = k.sum(dim=-2)
        numerator = torch.matmul(q, kv)
        denominator = torch.matmul(q, k_sum.unsqueeze(-1))
        out = numerator / (denominator + eps)
    return out.to(out_dtype)


def _inclusive_scan_(states: Tensor) -> Tensor:
    """Replace states (B, H, n, ...) by their cumulative sums along the chunk axis, in place.

    One vectorised add per chunk, each over all batch rows, heads and state
    entries. On the development machine (torch 2.13 CPU, AVX-512) this ran 3.5
    times faster than ``torch.cumsum`` along that non-innermost axis (1.5 ms
    against 5.1 ms for 64 states of 128 x 65 in 4 heads), and it needs no
    second buffer.
    """
    for index in range(1, states.shape[2]):
        states[:, :, index].add_(states[:, :, index - 1])
    return states


class _ChunkedCausalProducts(torch.autograd.Function):
    """Causal linear-attention products over chunks, with a hand-written backward.

    Inputs: q, k (B, H, n, C, F), values w (B, H, n, C, D) and an initial state
    s0 (B, H, F, D). Outputs: for each position t in chunk c,
    y_t = sum_{u <= t in chunk c} (q_t . k_u) w_u + q_t . S_c, where
    S_c = s0 + sum of k_u^T w_u over earlier chunks, and the final state
    s0 + sum over all positions of k_u^T w_u.

    Autograd through the plain formulation keeps every intermediate and
    differentiates the cumulative sum by flipping it twice. This backward
    keeps the inputs, the chunk prefix states (n F D) and the masked chunk
    scores (n C C), and runs the reverse scan in place.
    """

    @staticmethod
    def forward(ctx, q, k, w, s0):
        chunk_states = torch.matmul(k.transpose(-1, -2), w)
        prefix = _inclusive_scan_(chunk_states.clone())
        final = prefix[:, :, -1] + s0
        # Exclusive prefix state of each chunk: inclusive minus own, plus the initial state.
        prefix.sub_(chunk_states).add_(s0.unsqueeze(2))
        del chunk_states
        y = torch.matmul(q, prefix)
        scores = torch.matmul(q, k.transpose(-1, -2)).tril_()
        y.add_(torch.matmul(scores, w))
        ctx.save_for_backward(q, k, w, prefix, scores)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        q, k, w, prefix, scores = ctx.saved_tensors
        if grad_final is None:
            grad_final = torch.zeros_like(prefix[:, :, 0])
        grad_y = grad_y.contiguous()

        # Gradient reaching each chunk's prefix state from the later chunks
        # and from the final state: total minus the inclusive scan.
        suffix = torch.matmul(q.transpose(-1, -2), grad_y)
        grad_s0 = suffix.sum(dim=2) + grad_final
        _inclusive_scan_(suffix).neg_().add_(grad_s0.unsqueeze(2))

        grad_q = torch.matmul(grad_y, prefix.transpose(-1, -2))
        grad_scores = torch.matmul(grad_y, w.transpose(-1, -2)).tril_()
        grad_q.add_(torch.matmul(grad_scores, k))
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
        del grad_scores
        grad_k.add_(torch.matmul(w, suffix.transpose(-1, -2)))
        grad_w = torch.matmul(scores.transpose(-1, -2), grad_y)
        grad_w.add_(torch.matmul(k, suffix))
        return grad_q, grad_k, grad_w, grad_s0


def _causal_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int,
    state: Optional[LinearAttentionState],
    eps: float,
) -> Tuple[Tensor, LinearAttentionState]:
    """Chunked causal linear attention that starts from ``state``; inputs are in the accumulation dtype.

    The sequence is cut into n chunks of C positions. Inside a chunk the
    queries see the keys through a masked (C, C) product; keys of earlier
    chunks reach them through the exclusive prefix sum of per-chunk states,
    which one cumsum over the chunk axis computes for all chunks at once.
    The values carry an extra column of ones, so the same products give the
    denominators (and the state's k_sum) in the last column.
    """
    batch, heads, length, features = q.shape
    value_dim = v.shape[-1]
    if state is None:
        state = LinearAttentionState.zeros(batch, heads, features, value_dim, device=q.device, dtype=q.dtype)
    if length == 0:
        return q.new_zeros(batch, heads, 0, value_dim), state

    size = max(1, min(chunk_size, length))
    num_chunks = math.ceil(length / size)
    pad = num_chunks * size - length
    augmented = torch.cat([v, v.new_ones(batch, heads, length, 1)], dim=-1)
    if pad:
        # Padded positions have zero key features and values, and are cut off the output.
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        augmented = F.pad(augmented, (0, 0, 0, pad))

    q_chunks = q.reshape(batch, heads, num_chunks, size, features)
    k_chunks = k.reshape(batch, heads, num_chunks, size, features)
    w_chunks = augmented.reshape(batch, heads, num_chunks, size, value_dim + 1)
    s0 = torch.cat([state.kv.to(q.dtype), state.k_sum.to(q.dtype).unsqueeze(-1)], dim=-1)

    products, final = _ChunkedCausalProducts.apply(q_chunks, k_chunks, w_chunks, s0)
    products = products.reshape(batch, heads, num_chunks * size, value_dim + 1)[:, :, :length]
    out = products[..., :value_dim] / (products[..., value_dim:] + eps)
    return out, LinearAttentionState(kv=final[..., :value_dim], k_sum=final[..., value_dim])


def causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    eps: float = DEFAULT_EPS,
    key_padding_mask: Optional[Tensor] = None,
    method: str = "auto",
) -> Tensor:
    """Causal linear attention in O(N) time and memory: query t sees keys 0..t.

    Args:
        q, k: (B, H, N, F) features.
        v: (B, H, N, D_v) values.
        chunk_size: positions per chunk. The result does not depend on it
            beyond rounding. Any N works, the last chunk is padded inside.
        key_padding_mask: optional (B, N) bool, True where the position is
            padding; padded keys contribute nothing.
        method: "auto", "chunked" or "quadratic" (see ``METHODS``); "auto"
            takes the quadratic form for N * N <= QUADRATIC_MAX_PAIRS_CAUSAL.

    Returns:
        (B, H, N, D_v) in the dtype of ``q``.
    """
    _check_qkv(q, k, v, same_length=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    length = q.shape[2]
    quadratic = _takes_quadratic(method, length * length, QUADRATIC_MAX_PAIRS_CAUSAL)
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    with autocast_disabled(q.device.type):
        q, k, v = q.to(acc), k.to(acc), v.to(acc)
        k, v = _zero_padded_keys(k, v, key_padding_mask)
        if quadratic:
            out = _quadratic(q, k, v, None, causal=True, eps=eps)
        else:
            out, _ = _causal_chunked(q, k, v, chunk_size, None, eps)
    return out.to(out_dtype)


def recurrent_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: Optional[LinearAttentionState] = None,
    eps: float = DEFAULT_EPS,
    key_padding_mask: Optional[Tensor] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tuple[Tensor, LinearAttentionState]:
    """Continue causal linear attention with one or several new positions.

    The new positions see the keys summed in ``state`` and, causally, each
    other. Feeding a sequence in pieces of any sizes gives the output of
    :func:`causal_linear_attention` on the whole sequence.

    Args:
        q, k: (B, H, T, F) features of the T new positions.
        v: (B, H, T, D_v) their values.
        state: the state after the earlier positions, or None before the first.
        key_padding_mask: optional (B, T) bool, True where a new position is padding.

    Returns:
        (out, new_state): out is (B, H, T, D_v) in the dtype of ``q``, and
        new_state also contains the T new keys.
    """
    _check_qkv(q, k, v, same_length=True)
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    with autocast_disabled(q.device.type):
        q, k, v = q.to(acc), k.to(acc), v.to(acc)
        k, v = _zero_padded_keys(k, v, key_padding_mask)
        if state is not None:
            _check_state(state, q, v)
        if q.shape[2] == 1:
            # One new position (token-by-token decoding): add it to the state, then read the state.
            new_state = accumulate_state(k, v, state)
            out = attend_state(q, new_state, eps)
        else:
            out, new_state = _causal_chunked(q, k, v, chunk_size, state, eps)
    return out.to(out_dtype), new_state


def _check_state(state: LinearAttentionState, q: Tensor, v: Tensor) -> None:
    expected = (q.shape[0], q.shape[1], q.shape[3], v.shape[3])
    if tuple(state.kv.shape) != expected:
        raise ValueError(f"state.kv has shape {tuple(state.kv.shape)}, expected (B, H, F, D_v) = {expected}")


def accumulate_state(
    k: Tensor,
    v: Tensor,
    state: Optional[LinearAttentionState] = None,
    key_padding_mask: Optional[Tensor] = None,
) -> LinearAttentionState:
    """Add keys (B, H, S, F) and values (B, H, S, D_v) to a state (None is the empty state)."""
    acc = accumulation_dtype(k.dtype)
    with autocast_disabled(k.device.type):
        k, v = k.to(acc), v.to(acc)
        k, v = _zero_padded_keys(k, v, key_padding_mask)
        kv = torch.matmul(k.transpose(-1, -2), v)
        k_sum = k.sum(dim=-2)
        if state is not None:
            kv = state.kv.to(acc) + kv
            k_sum = state.k_sum.to(acc) + k_sum
    return LinearAttentionState(kv=kv, k_sum=k_sum)


def attend_state(q: Tensor, state: LinearAttentionState, eps: float = DEFAULT_EPS) -> Tensor:
    """Attend queries (B, H, T, F) to every key summed in ``state``; returns (B, H, T, D_v)."""
    out_dtype = q.dtype
    acc = state.kv.dtype
    with autocast_disabled(q.device.type):
        q = q.to(acc)
        numerator = torch.matmul(q, state.kv)
        denominator = torch.matmul(q, state.k_sum.unsqueeze(-1))
        out = numerator / (denominator + eps)
    return out.to(out_dtype)


def normalize_prefix_lengths(prefix_lengths: Tensor, batch_size: int, num_queries: int, num_keys: int) -> Tensor:
    """Check a prefix schedule and return it as a (B, N_q) LongTensor clamped to [0, N_k]."""
    lengths = torch.as_tensor(prefix_lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"prefix_lengths must be an integer tensor, got dtype {lengths.dtype}")
    lengths = lengths.long()
    if lengths.dim() == 1:
        lengths = lengths.unsqueeze(0).expand(batch_size, -1)
    if lengths.shape != (batch_size, num_queries):
        raise ValueError(
            f"prefix_lengths must have shape (N_q,) = ({num_queries},) or (B, N_q) = "
            f"({batch_size}, {num_queries}), got {tuple(torch.as_tensor(prefix_lengths).shape)}"
        )
    if num_queries > 0:
        if bool((lengths < 0).any()):
            raise ValueError(f"prefix_lengths must not be negative, got minimum {int(lengths.min())}")
        if num_queries > 1 and bool((lengths[:, 1:] < lengths[:, :-1]).any()):
            row = int((lengths[:, 1:] < lengths[:, :-1]).any(dim=1).nonzero()[0])
            raise ValueError(
                f"prefix_lengths must be non-decreasing along the queries; batch row {row} is "
                f"{lengths[row].tolist()[:20]}{' ...' if num_queries > 20 else ''}"
            )
    return lengths.clamp(max=num_keys)


def prefix_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    prefix_lengths: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    eps: float = DEFAULT_EPS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    method: str = "auto",
) -> Tensor:
    """Linear attention where query i sees only the keys [0, prefix_lengths[i]).

    Used for wait-k cross-attention and for block-causal ("chunk") encoder
    self-attention. The schedule must be non-decreasing; lengths beyond N_k
    are clamped to N_k.

    How it runs in O(N_q + N_k): keys and queries are merged into one
    sequence of N_q + N_k slots in the order in which a streaming system meets
    them (query i comes right after key prefix_lengths[i] - 1). Key slots carry
    features and values but no query, query slots carry a query but a zero
    key. Causal linear attention over the merged sequence then gives each
    query exactly the state of its prefix, and the chunked causal form
    computes those prefix states with one cumsum. No (N_q, N_k) mask is built.

    Args:
        q: (B, H, N_q, F) query features.
        k: (B, H, N_k, F) key features.
        v: (B, H, N_k, D_v) values.
        prefix_lengths: (N_q,) or (B, N_q) integer tensor, non-decreasing.
        key_padding_mask: optional (B, N_k) bool, True where the key is padding.
        method: "auto", "chunked" or "quadratic" (see ``METHODS``); "auto"
            takes the quadratic form for N_q * N_k <= QUADRATIC_MAX_PAIRS_PREFIX.

    Returns:
        (B, H, N_q, D_v) in the dtype of ``q``.
    """
    _check_qkv(q, k, v, same_length=False)
    batch, heads, num_queries, features = q.shape
    num_keys = k.shape[2]
    value_dim = v.shape[-1]
    lengths = normalize_prefix_lengths(prefix_lengths, batch, num_queries, num_keys).to(q.device)
    quadratic = _takes_quadratic(method, num_queries * num_keys, QUADRATIC_MAX_PAIRS_PREFIX)
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    with autocast_disabled(q.device.type):
        q, k, v = q.to(acc), k.to(acc), v.to(acc)
        k, v = _zero_padded_keys(k, v, key_padding_mask)
        if quadratic:
            visible = torch.arange(num_keys, device=q.device)[None, None, :] < lengths[:, :, None]
            out = _quadratic(q, k, v, visible[:, None], causal=False, eps=eps)
            return out.to(out_dtype)

        # Slot of key j: j plus the number of queries placed before it (those with L_i <= j).
        key_index = torch.arange(num_keys, device=q.device).expand(batch, num_keys).contiguous()
        key_slot = key_index + torch.searchsorted(lengths.contiguous(), key_index, right=True)
        # Slot of query i: i plus the number of keys it sees.
        query_slot = torch.arange(num_queries, device=q.device) + lengths
        total = num_queries + num_keys

        def place(slots: Tensor, values: Tensor) -> Tensor:
            index = slots[:, None, :, None].expand(-1, heads, -1, values.shape[-1])
            merged = values.new_zeros(batch, heads, total, values.shape[-1])
            return merged.scatter(2, index, values)

        merged_q = place(query_slot, q)
        merged_k = place(key_slot, k)
        merged_v = place(key_slot, v)
        merged_out, _ = _causal_chunked(merged_q, merged_k, merged_v, chunk_size, None, eps)
        gather_index = query_slot[:, None, :, None].expand(-1, heads, -1, value_dim)
        out = merged_out.gather(2, gather_index)
    return out.to(out_dtype)
