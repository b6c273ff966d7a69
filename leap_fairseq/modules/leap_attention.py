"""LeapMultiheadAttention: fairseq's MultiheadAttention with linear attention types.

``attention_type`` selects the score function:

- ``softmax``: fairseq's own scaled dot-product attention (the parent class).
- ``relu``, ``cosformer``, ``leap``: linear attention with the feature maps in
  :mod:`leap_fairseq.modules.feature_maps`, computed by :mod:`leap_fairseq.ops`.

The parameters q_proj, k_proj, v_proj and out_proj are fairseq's, so a
softmax model has exactly the parameters of fairseq's transformer and loads
its checkpoints. ``leap`` adds ``feature_map.query_proportion`` and
``feature_map.key_proportion``.

Which linear form runs:

- self-attention with ``causal=True``: chunked causal form, O(N);
- ``prefix_lengths`` given (self- or cross-attention): prefix form, query i
  sees keys [0, prefix_lengths[b, i]) (wait-k cross-attention, block-causal
  "chunk" encoder self-attention);
- otherwise: non-causal with key padding.

Positions for ``cosformer`` (p = position / M): non-causal attention uses the
number of non-padded keys as M. Causal and prefix attention, and every
streaming method, use the fixed horizon M = ``cosformer_horizon``, for queries
and keys alike, so that offline training with ``prefix_lengths`` and
streaming see the same features. Positions count non-padded tokens, so left
padding does not shift them. Decoder query positions in cross-attention are
0, 1, ... (fairseq does not pass a query padding mask).

Dropout applies to softmax attention probabilities only. Linear types never
form the probabilities in their fast path, so ``dropout`` has no effect there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from fairseq.modules.multihead_attention import MultiheadAttention

from leap_fairseq.modules.feature_maps import KEY, QUERY, build_feature_map
from leap_fairseq.ops import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EPS,
    LinearAttentionState,
    accumulate_state,
    attend_state,
    causal_linear_attention,
    noncausal_linear_attention,
    prefix_linear_attention,
    recurrent_linear_attention,
)
from leap_fairseq.ops.linear_attention import accumulation_dtype, normalize_prefix_lengths

ATTENTION_TYPES = ("softmax", "relu", "cosformer", "leap")
LINEAR_TYPES = ("relu", "cosformer", "leap")

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


@dataclass
class AttentionStreamState:
    """State of one attention module between streaming calls.

    Linear types use ``linear`` and ``positions``; softmax uses ``keys``,
    ``values``, ``key_padding_mask`` and ``positions``.

    Attributes:
        positions: (B,) LongTensor, the number of non-padded keys added so far
            (the absolute position of the next key).
        linear: summed key state; kv (B, H, F, d_h) and k_sum (B, H, F), float32
            (float64 for float64 modules).
        keys: (B, H, S, d_h) projected keys seen so far (softmax only).
        values: (B, H, S, d_h) projected values seen so far (softmax only).
        key_padding_mask: (B, S) bool, True where a cached key is padding (softmax only).
    """

    positions: Tensor
    linear: Optional[LinearAttentionState] = None
    keys: Optional[Tensor] = None
    values: Optional[Tensor] = None
    key_padding_mask: Optional[Tensor] = None

    def index_select(self, order: Tensor) -> "AttentionStreamState":
        """Return the state of the batch rows in ``order``."""
        return AttentionStreamState(
            positions=self.positions.index_select(0, order),
            linear=None if self.linear is None else self.linear.index_select(order),
            keys=None if self.keys is None else self.keys.index_select(0, order),
            values=None if self.values is None else self.values.index_select(0, order),
            key_padding_mask=None if self.key_padding_mask is None else self.key_padding_mask.index_select(0, order),
        )


def padding_positions(key_padding_mask: Optional[Tensor], batch: int, length: int, device) -> Tensor:
    """Return (B, N) positions that count only non-padded tokens (padded ones repeat a neighbour's)."""
    if key_padding_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    valid = (~key_padding_mask.to(device=device, dtype=torch.bool)).long()
    return (valid.cumsum(dim=1) - 1).clamp(min=0)


class LeapMultiheadAttention(MultiheadAttention):
    """Multi-head attention with softmax, ReLU, cosFormer or LeaP scores; a drop-in for fairseq's.

    Args (beyond fairseq's MultiheadAttention):
        attention_type: "softmax", "relu", "cosformer" or "leap".
        causal: self-attention where position t sees positions <= t.
            A fairseq future mask passed as ``attn_mask`` is then accepted and
            not needed; softmax builds it when none is passed.
        leap_hidden_ratio: r in LeaP's proportion module d_h -> d_h / r -> 1; must divide d_h.
        cosformer_horizon: M for cosformer in causal, prefix and streaming attention.
        chunk_size: chunk length of the causal linear form (speed only).
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        kdim=None,
        vdim=None,
        dropout=0.0,
        bias=True,
        self_attention=False,
        encoder_decoder_attention=False,
        attention_type="leap",
        causal=False,
        leap_hidden_ratio=4,
        cosformer_horizon=1024,
        q_noise=0.0,
        qn_block_size=8,
        chunk_size=DEFAULT_CHUNK_SIZE,
    ):
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if cosformer_horizon <= 0:
            raise ValueError(f"cosformer_horizon must be positive, got {cosformer_horizon}")
        super().__init__(
            embed_dim,
            num_heads,
            kdim=kdim,
            vdim=vdim,
            dropout=dropout,
            bias=bias,
            self_attention=self_attention,
            encoder_decoder_attention=encoder_decoder_attention,
            q_noise=q_noise,
            qn_block_size=qn_block_size,
        )
        self.attention_type = attention_type
        self.causal = causal
        self.leap_hidden_ratio = leap_hidden_ratio
        self.cosformer_horizon = cosformer_horizon
        self.chunk_size = chunk_size
        self.eps = DEFAULT_EPS
        self._checked_future_mask = None
        if attention_type in LINEAR_TYPES:
            self.feature_map = build_feature_map(attention_type, self.head_dim, leap_hidden_ratio)
        else:
            self.feature_map = None

    @property
    def is_linear(self) -> bool:
        return self.attention_type in LINEAR_TYPES

    def extra_repr(self) -> str:
        return f"attention_type={self.attention_type}, causal={self.causal}, num_heads={self.num_heads}"

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
        prefix_lengths: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attend query (T, B, C) to key/value (S, B, C); returns (attn (T, B, C), weights or None).

        fairseq's arguments keep their meaning. ``prefix_lengths`` is a (B, T)
        or (T,) LongTensor: query i sees keys [0, prefix_lengths[b, i]).

        For linear types, weights (B, T, S), or (H, B, T, S) with
        ``need_head_weights``, are computed only when requested, by an extra
        O(T S) pass, and are None during incremental decoding because the
        state holds sums, not keys. fairseq's decoder requests them from the
        last layer's cross-attention (its alignment layer).
        """
        if need_head_weights:
            need_weights = True
        if not self.is_linear:
            return self._softmax_forward(
                query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                attn_mask, before_softmax, need_head_weights, prefix_lengths,
            )
        if before_softmax:
            raise ValueError(f"before_softmax is only defined for softmax attention, not {self.attention_type!r}")
        self._check_linear_attn_mask(attn_mask, query.shape[0])
        if incremental_state is not None:
            if prefix_lengths is not None:
                raise ValueError(
                    "prefix_lengths cannot be combined with incremental_state; "
                    "use the streaming methods extend_source/attend_source"
                )
            return self._linear_incremental(query, key, value, key_padding_mask, incremental_state, static_kv)
        return self._linear_offline(query, key, value, key_padding_mask, need_weights, need_head_weights, prefix_lengths)

    # ---------------------------- softmax -----------------------------

    def _softmax_forward(
        self, query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
        attn_mask, before_softmax, need_head_weights, prefix_lengths,
    ):
        if prefix_lengths is not None:
            if incremental_state is not None or attn_mask is not None or before_softmax:
                raise ValueError("prefix_lengths cannot be combined with incremental_state, attn_mask or before_softmax")
            q, k, v = self._project(query, key, value)
            lengths = normalize_prefix_lengths(prefix_lengths, q.shape[0], q.shape[2], k.shape[2]).to(q.device)
            visible = torch.arange(k.shape[2], device=q.device)[None, None, :] < lengths[:, :, None]
            if key_padding_mask is not None:
                visible = visible & ~key_padding_mask.to(device=q.device, dtype=torch.bool)[:, None, :]
            out, probs = self._softmax_attend(q, k, v, visible[:, None])
            return self._merge_heads(out), self._format_weights(probs, need_weights, need_head_weights)
        if (
            self.causal
            and self.self_attention
            and attn_mask is None
            and incremental_state is None
            and query.shape[0] > 1
        ):
            attn_mask = self._future_mask(query)
        return super().forward(
            query, key, value, key_padding_mask=key_padding_mask, incremental_state=incremental_state,
            need_weights=need_weights, static_kv=static_kv, attn_mask=attn_mask,
            before_softmax=before_softmax, need_head_weights=need_head_weights,
        )

    def _future_mask(self, query: Tensor) -> Tensor:
        length = query.shape[0]
        mask = torch.full((length, length), float("-inf"), device=query.device, dtype=query.dtype)
        return torch.triu(mask, 1)

    def _softmax_attend(self, q: Tensor, k: Tensor, v: Tensor, visible: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Scaled dot-product attention on (B, H, T, d_h) tensors; ``visible`` bool (B, 1, T, S).

        Queries that see no key get output 0.
        """
        scores = torch.matmul(q * self.scaling, k.transpose(-1, -2))
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        # Half-precision scores are normalised in float32, as fairseq's utils.softmax does.
        low_precision = scores.dtype in (torch.float16, torch.bfloat16)
        probs = torch.softmax(scores.float() if low_precision else scores, dim=-1)
        if visible is not None:
            probs = probs.masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
        probs = probs.type_as(scores)
        out = torch.matmul(self.dropout_module(probs), v)
        return out, probs

    # ----------------------------- linear ------------------------------

    def _check_linear_attn_mask(self, attn_mask: Optional[Tensor], length: int) -> None:
        """Accept only fairseq's future mask, and only for causal self-attention."""
        if attn_mask is None:
            return
        if not (self.causal and self.self_attention):
            raise ValueError(
                f"attn_mask is not supported by {self.attention_type!r} attention except as the future mask "
                "of causal self-attention; pass prefix_lengths for prefix (wait-k, block) masks"
            )
        cache_key = (attn_mask.data_ptr(), tuple(attn_mask.shape), attn_mask._version)
        if self._checked_future_mask == cache_key:
            return
        # A fairseq future mask is -inf (or True) above the diagonal and 0 (False) elsewhere,
        # sliced from fairseq's cached buffer to (T, T). The check runs once per mask tensor.
        if attn_mask.dim() != 2 or attn_mask.shape[0] != length or attn_mask.shape[1] != length:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} is not the ({length}, {length}) future mask "
                f"that {self.attention_type!r} attention accepts"
            )
        blocked = attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask) | (attn_mask < -1e4)
        if attn_mask.dtype != torch.bool and bool(((attn_mask != 0) & ~blocked).any()):
            raise ValueError("attn_mask has additive values other than 0 and -inf; linear attention cannot apply them")
        expected = torch.ones(length, length, dtype=torch.bool, device=attn_mask.device).triu(1)
        if not torch.equal(blocked.bool(), expected):
            raise ValueError(
                f"attn_mask is not fairseq's future mask; {self.attention_type!r} attention only accepts that mask "
                "(causal=True makes it unnecessary). Pass prefix_lengths for prefix (wait-k, block) masks"
            )
        self._checked_future_mask = cache_key

    def _project(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Project to per-head (B, H, T, d_h) queries and (B, H, S, d_h) keys and values."""
        q = self.q_proj(query)
        if self.self_attention:
            k = self.k_proj(query)
            v = self.v_proj(query)
        else:
            if key is None or value is None:
                raise ValueError("key and value are required unless the module is self-attention")
            k = self.k_proj(key)
            v = self.v_proj(value)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _project_queries(self, query: Tensor) -> Tensor:
        return self._split_heads(self.q_proj(query))

    def _project_keys_values(self, source: Tensor) -> Tuple[Tensor, Tensor]:
        return self._split_heads(self.k_proj(source)), self._split_heads(self.v_proj(source))

    def _split_heads(self, x: Tensor) -> Tensor:
        length, batch, _ = x.shape
        return x.reshape(length, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _merge_heads(self, x: Tensor) -> Tensor:
        batch, heads, length, head_dim = x.shape
        x = x.permute(2, 0, 1, 3).reshape(length, batch, heads * head_dim)
        return self.out_proj(x)

    def _features(self, x: Tensor, kind: str, positions: Tensor, length) -> Tensor:
        return self.feature_map(x, kind, positions=positions, length=length)

    def _linear_offline(self, query, key, value, key_padding_mask, need_weights, need_head_weights, prefix_lengths):
        q, k, v = self._project(query, key, value)
        batch, _, tgt_len, _ = q.shape
        src_len = k.shape[2]
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
            if key_padding_mask.shape != (batch, src_len):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = {(batch, src_len)}, got {tuple(key_padding_mask.shape)}"
                )
        key_positions = padding_positions(key_padding_mask, batch, src_len, q.device)
        query_positions = key_positions if self.self_attention else padding_positions(None, batch, tgt_len, q.device)

        if prefix_lengths is not None:
            mode = "prefix"
        elif self.causal and self.self_attention:
            mode = "causal"
        else:
            mode = "noncausal"
        if mode == "noncausal":
            if key_padding_mask is None:
                horizon = src_len
            else:
                horizon = (~key_padding_mask).sum(dim=1).clamp(min=1)
        else:
            horizon = self.cosformer_horizon

        phi_q = self._features(q, QUERY, query_positions, horizon)
        phi_k = self._features(k, KEY, key_positions, horizon)
        if mode == "prefix":
            out = prefix_linear_attention(
                phi_q, phi_k, v, prefix_lengths, key_padding_mask, eps=self.eps, chunk_size=self.chunk_size
            )
        elif mode == "causal":
            out = causal_linear_attention(
                phi_q, phi_k, v, chunk_size=self.chunk_size, eps=self.eps, key_padding_mask=key_padding_mask
            )
        else:
            out = noncausal_linear_attention(phi_q, phi_k, v, key_padding_mask, eps=self.eps)

        weights = None
        if need_weights:
            # NOTE: O(T S) time and memory; only requested weights pay for it.
            visible = self._visibility(mode, batch, tgt_len, src_len, key_padding_mask, prefix_lengths, q.device)
            weights = self._linear_weights(phi_q, phi_k, visible, need_head_weights)
        return self._merge_heads(out), weights

    def _visibility(self, mode, batch, tgt_len, src_len, key_padding_mask, prefix_lengths, device) -> Optional[Tensor]:
        """Return the bool (B, 1, T, S) visibility that the fast forms apply implicitly."""
        visible = torch.ones(batch, tgt_len, src_len, dtype=torch.bool, device=device)
        if mode == "causal":
            visible = visible & torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).tril()
        elif mode == "prefix":
            lengths = normalize_prefix_lengths(prefix_lengths, batch, tgt_len, src_len).to(device)
            visible = visible & (torch.arange(src_len, device=device)[None, None, :] < lengths[:, :, None])
        if key_padding_mask is not None:
            visible = visible & ~key_padding_mask[:, None, :]
        return visible[:, None]

    def _linear_weights(self, phi_q, phi_k, visible, need_head_weights) -> Tensor:
        dtype = accumulation_dtype(phi_q.dtype)
        scores = torch.matmul(phi_q.to(dtype), phi_k.to(dtype).transpose(-1, -2)).masked_fill(~visible, 0.0)
        weights = scores / (scores.sum(dim=-1, keepdim=True) + self.eps)
        return self._format_weights(weights, True, need_head_weights)

    @staticmethod
    def _format_weights(weights: Tensor, need_weights: bool, need_head_weights: bool) -> Optional[Tensor]:
        """(B, H, T, S) weights to fairseq's (B, T, S) head average or (H, B, T, S)."""
        if not need_weights:
            return None
        weights = weights.transpose(1, 0)
        return weights if need_head_weights else weights.mean(dim=0)

    # ------------------------ incremental decoding ------------------------

    def _linear_incremental(self, query, key, value, key_padding_mask, incremental_state, static_kv):
        buffer = self._get_input_buffer(incremental_state)
        if self.encoder_decoder_attention:
            out = self._incremental_cross(query, key, value, key_padding_mask, buffer, static_kv)
        elif self.self_attention and self.causal:
            out = self._incremental_self(query, key_padding_mask, buffer)
        else:
            raise ValueError(
                "incremental decoding with linear attention needs causal self-attention (causal=True) "
                "or encoder-decoder attention"
            )
        self._set_input_buffer(incremental_state, buffer)
        return out, None

    def _incremental_self(self, query, key_padding_mask, buffer):
        q, k, v = self._project(query, None, None)
        batch, _, new_len, _ = q.shape
        if key_padding_mask is not None:
            # fairseq may pass the mask of the whole prefix; the last columns belong to the new tokens.
            key_padding_mask = key_padding_mask[:, -new_len:].to(device=q.device, dtype=torch.bool)
        if "kv" in buffer:
            state = LinearAttentionState(kv=buffer["kv"], k_sum=buffer["k_sum"])
            start = buffer["positions"]
        else:
            state = None
            start = torch.zeros(batch, dtype=torch.long, device=q.device)
        positions = start[:, None] + padding_positions(key_padding_mask, batch, new_len, q.device)
        phi_q = self._features(q, QUERY, positions, self.cosformer_horizon)
        phi_k = self._features(k, KEY, positions, self.cosformer_horizon)
        out, state = recurrent_linear_attention(
            phi_q, phi_k, v, state, eps=self.eps, key_padding_mask=key_padding_mask, chunk_size=self.chunk_size
        )
        added = new_len if key_padding_mask is None else (~key_padding_mask).sum(dim=1)
        buffer["kv"], buffer["k_sum"] = state.kv, state.k_sum
        buffer["positions"] = start + added
        return self._merge_heads(out)

    def _incremental_cross(self, query, key, value, key_padding_mask, buffer, static_kv):
        q = self._project_queries(query)
        batch, _, new_len, _ = q.shape
        if "kv" not in buffer or not static_kv:
            if key is None:
                raise ValueError("encoder-decoder attention needs the encoder output as key on its first step")
            k, v = self._project_keys_values(key)
            src_len = k.shape[2]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
                horizon = (~key_padding_mask).sum(dim=1).clamp(min=1)
            else:
                horizon = torch.full((batch,), src_len, dtype=torch.long, device=q.device)
            key_positions = padding_positions(key_padding_mask, batch, src_len, q.device)
            phi_k = self._features(k, KEY, key_positions, horizon)
            state = accumulate_state(phi_k, v, None, key_padding_mask)
            buffer["kv"], buffer["k_sum"] = state.kv, state.k_sum
            buffer["source_lengths"] = horizon
            buffer["positions"] = torch.zeros(batch, dtype=torch.long, device=q.device)
        start = buffer["positions"]
        positions = start[:, None] + torch.arange(new_len, device=q.device)[None, :]
        phi_q = self._features(q, QUERY, positions, buffer["source_lengths"])
        out = attend_state(phi_q, LinearAttentionState(kv=buffer["kv"], k_sum=buffer["k_sum"]), eps=self.eps)
        buffer["positions"] = start + new_len
        return self._merge_heads(out)

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state: Optional[IncrementalState], new_order: Tensor):
        """Reorder the cached state along the batch for beam search."""
        if not self.is_linear:
            return super().reorder_incremental_state(incremental_state, new_order)
        buffer = self._get_input_buffer(incremental_state)
        if buffer:
            for name, tensor in list(buffer.items()):
                if tensor is not None:
                    buffer[name] = tensor.index_select(0, new_order)
            incremental_state = self._set_input_buffer(incremental_state, buffer)
        return incremental_state

    # ------------------------- explicit streaming -------------------------

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> AttentionStreamState:
        """Return the empty streaming state for ``batch_size`` sequences.

        Linear types: kv (B, H, F, d_h) and k_sum (B, H, F) zeros in float32
        (float64 when ``dtype`` is float64). Softmax: empty (B, H, 0, d_h) key
        and value caches of ``dtype``.
        """
        positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        if self.is_linear:
            linear = LinearAttentionState.zeros(
                batch_size, self.num_heads, self.feature_map.feature_dim, self.head_dim, device=device, dtype=dtype
            )
            return AttentionStreamState(positions=positions, linear=linear)
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return AttentionStreamState(
            positions=positions,
            keys=empty,
            values=empty.clone(),
            key_padding_mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )

    def stream_self(
        self, x_new: Tensor, state: AttentionStreamState, block: bool = False
    ) -> Tuple[Tensor, AttentionStreamState]:
        """Continue causal self-attention with new positions.

        Args:
            x_new: (T_new, B, C) inputs at the next T_new positions.
            state: the state after the earlier positions (from :meth:`init_state`).
            block: if False, new position t sees all earlier positions and new
                positions up to t (the offline ``causal=True`` result). If True,
                every new position sees all earlier positions and the whole new
                block (the offline result with ``prefix_lengths`` at block ends).

        Returns:
            (out (T_new, B, C), new state). The input state is not modified.
        """
        if not self.self_attention:
            raise ValueError("stream_self needs a self-attention module (self_attention=True)")
        q, k, v = self._project(x_new, None, None)
        batch, _, new_len, _ = q.shape
        positions = state.positions[:, None] + torch.arange(new_len, device=q.device)[None, :]
        new_positions = state.positions + new_len
        if not self.is_linear:
            keys = torch.cat([state.keys, k], dim=2)
            values = torch.cat([state.values, v], dim=2)
            mask = torch.cat(
                [state.key_padding_mask, torch.zeros(batch, new_len, dtype=torch.bool, device=q.device)], dim=1
            )
            visible = ~mask[:, None, None, :]
            if not block:
                past = state.keys.shape[2]
                limit = past + torch.arange(new_len, device=q.device)
                visible = visible & (torch.arange(keys.shape[2], device=q.device)[None, :] <= limit[:, None])
            out, _ = self._softmax_attend(q, keys, values, visible)
            new_state = AttentionStreamState(positions=new_positions, keys=keys, values=values, key_padding_mask=mask)
            return self._merge_heads(out), new_state

        phi_q = self._features(q, QUERY, positions, self.cosformer_horizon)
        phi_k = self._features(k, KEY, positions, self.cosformer_horizon)
        if block:
            linear = accumulate_state(phi_k, v, state.linear)
            out = attend_state(phi_q, linear, eps=self.eps)
        else:
            out, linear = recurrent_linear_attention(
                phi_q, phi_k, v, state.linear, eps=self.eps, chunk_size=self.chunk_size
            )
        return self._merge_heads(out), AttentionStreamState(positions=new_positions, linear=linear)

    def extend_source(
        self, source_new: Tensor, state: AttentionStreamState, source_padding_mask: Optional[Tensor] = None
    ) -> AttentionStreamState:
        """Add new encoder states to a cross-attention state.

        Args:
            source_new: (S_new, B, C_k) new encoder outputs.
            state: the cross-attention state (from :meth:`init_state`).
            source_padding_mask: optional (B, S_new) bool, True where padding.
                Padded positions add nothing and do not advance positions.

        Returns:
            The new state; the input state is not modified.
        """
        k, v = self._project_keys_values(source_new)
        batch, _, new_len, _ = k.shape
        mask = None
        if source_padding_mask is not None:
            mask = source_padding_mask.to(device=k.device, dtype=torch.bool)
            if mask.shape != (batch, new_len):
                raise ValueError(
                    f"source_padding_mask must have shape (B, S_new) = {(batch, new_len)}, got {tuple(mask.shape)}"
                )
        added = new_len if mask is None else (~mask).sum(dim=1)
        new_positions = state.positions + added
        if not self.is_linear:
            if mask is None:
                mask = torch.zeros(batch, new_len, dtype=torch.bool, device=k.device)
            return AttentionStreamState(
                positions=new_positions,
                keys=torch.cat([state.keys, k], dim=2),
                values=torch.cat([state.values, v], dim=2),
                key_padding_mask=torch.cat([state.key_padding_mask, mask], dim=1),
            )
        positions = state.positions[:, None] + padding_positions(mask, batch, new_len, k.device)
        phi_k = self._features(k, KEY, positions, self.cosformer_horizon)
        linear = accumulate_state(phi_k, v, state.linear, mask)
        return AttentionStreamState(positions=new_positions, linear=linear)

    def attend_source(self, query: Tensor, state: AttentionStreamState, query_offset=0) -> Tensor:
        """Attend queries to everything in a cross-attention state.

        Args:
            query: (T, B, C) decoder states.
            state: the cross-attention state built by :meth:`extend_source`.
            query_offset: absolute index of the first query (int or (B,)
                LongTensor); only cosformer uses it, with M = cosformer_horizon.

        Returns:
            (T, B, C).
        """
        q = self._project_queries(query)
        batch, _, length, _ = q.shape
        if not self.is_linear:
            visible = ~state.key_padding_mask[:, None, None, :]
            out, _ = self._softmax_attend(q, state.keys, state.values, visible)
            return self._merge_heads(out)
        if isinstance(query_offset, Tensor):
            start = query_offset.to(q.device).reshape(-1, 1)
        else:
            start = torch.full((batch, 1), int(query_offset), dtype=torch.long, device=q.device)
        positions = start + torch.arange(length, device=q.device)[None, :]
        phi_q = self._features(q, QUERY, positions, self.cosformer_horizon)
        return self._merge_heads(attend_state(phi_q, state.linear, eps=self.eps))
