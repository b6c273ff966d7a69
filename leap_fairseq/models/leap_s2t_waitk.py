"""Wait-k speech-to-text model with a streaming LeaP encoder.

Registered on fairseq's ``speech_to_text`` task as model ``leap_s2t_waitk``
with the architectures ``leap_s2t_waitk`` (base), ``leap_s2t_waitk_s``
(256 dims, 12 encoder and 6 decoder layers, 4 heads, FFN 2048) and
``leap_s2t_waitk_tiny`` (for CPU tests).

Data flow: 80-dim filterbank frames -> :class:`Conv1dSubsampler` (two stride-2
convolutions, 40 ms per encoder state) -> scaled states plus absolute
sinusoidal positions -> pre-norm encoder layers -> final LayerNorm. The
decoder (pre-norm, causal self-attention, cross-attention, shared input and
output embeddings) follows the wait-k schedule of
:mod:`leap_fairseq.models.waitk_schedule` in training, in ``fairseq-generate``
and in the streaming API.

Encoder masks (``--encoder-attention-mask``):

- ``full``: bidirectional, symmetric convolution padding. Streaming re-encodes
  the whole prefix on each call (``encoder_streams_incrementally`` is False).
- ``causal``: each state sees its past and itself; left-only convolution padding.
- ``chunk``: each state sees its past and the rest of its pre-decision block
  of ``--fixed-pre-decision-ratio`` states; left-only convolution padding.

With ``causal`` and ``chunk`` the streamed encoder gives the offline result,
and each streaming call costs time proportional to its new input for the
linear attention types (softmax keeps a growing key/value cache instead).
"""

import logging
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq import checkpoint_utils, utils
from fairseq.data.data_utils import lengths_to_padding_mask
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.modules import FairseqDropout, LayerNorm

from leap_fairseq.models.streaming import DecoderStreamState, EncoderStreamState, StreamState
from leap_fairseq.models.waitk_schedule import (
    chunk_prefix_lengths,
    check_waitk_arguments,
    waitk_prefix_lengths,
    waitk_should_write,
    waitk_source_budget,
)
from leap_fairseq.modules.leap_attention import LeapMultiheadAttention
from leap_fairseq.modules.subsampler import Conv1dSubsampler
from leap_fairseq.vocabulary import record_or_check_vocabulary

logger = logging.getLogger(__name__)

ATTENTION_TYPES = ("softmax", "relu", "cosformer", "leap")
ENCODER_MASKS = ("full", "causal", "chunk")


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Return absolute sinusoidal embeddings (N, dim) for integer positions (N,).

    Channel j < dim/2 is sin(p * w_j) and channel dim/2 + j is cos(p * w_j),
    with w_j = 10000^(-j / (dim/2 - 1)). A streaming caller passes offset
    positions and gets the rows an offline call would give.
    """
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -scale)
    angles = positions.to(torch.float32).unsqueeze(1) * frequencies.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = F.pad(table, (0, 1))
    return table


def parse_int_list(value, option: str) -> List[int]:
    """Parse "1,3,5" (or a list of ints) into a list of ints, naming the option in errors."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [item for item in str(value).replace(" ", "").split(",") if item]
    try:
        parsed = [int(item) for item in items]
    except ValueError as error:
        raise ValueError(f"{option} expects comma-separated integers, got {value!r}") from error
    if not parsed:
        raise ValueError(f"{option} expects at least one integer, got {value!r}")
    return parsed


def build_attention(args, embed_dim: int, num_heads: int, attention_type: str, causal: bool, **kwargs) -> LeapMultiheadAttention:
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    return LeapMultiheadAttention(
        embed_dim,
        num_heads,
        dropout=args.attention_dropout,
        attention_type=attention_type,
        causal=causal,
        leap_hidden_ratio=args.leap_hidden_ratio,
        cosformer_horizon=args.cosformer_horizon,
        **kwargs,
    )


class FeedForward(nn.Module):
    """Position-wise FFN of a pre-norm layer: LayerNorm, Linear, activation, Linear."""

    def __init__(self, embed_dim: int, ffn_dim: int, args):
        super().__init__()
        self.layer_norm = LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.activation_fn = utils.get_activation_fn(args.activation_fn)
        self.activation_dropout = FairseqDropout(args.activation_dropout, module_name=self.__class__.__name__)
        self.dropout = FairseqDropout(args.dropout, module_name=self.__class__.__name__)

    def forward(self, x: Tensor) -> Tensor:
        """Return x plus the FFN branch (the residual is included)."""
        h = self.activation_dropout(self.activation_fn(self.fc1(self.layer_norm(x))))
        return x + self.dropout(self.fc2(h))


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, args):
        super().__init__()
        dim = args.encoder_embed_dim
        self.self_attn = build_attention(
            args,
            dim,
            args.encoder_attention_heads,
            args.encoder_attention_type,
            causal=args.encoder_attention_mask == "causal",
            self_attention=True,
        )
        self.self_attn_layer_norm = LayerNorm(dim)
        self.dropout = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.ffn = FeedForward(dim, args.encoder_ffn_embed_dim, args)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], prefix_lengths: Optional[Tensor]) -> Tensor:
        """x: (T, B, C); padding_mask: (B, T) True at padding; prefix_lengths: (B, T) or None."""
        h = self.self_attn_layer_norm(x)
        h, _ = self.self_attn(
            query=h, key=h, value=h, key_padding_mask=padding_mask, need_weights=False, prefix_lengths=prefix_lengths
        )
        x = x + self.dropout(h)
        return self.ffn(x)

    def stream(self, x_new: Tensor, attention_state, block: bool):
        """Run new states (T_new, B, C) through the layer; return (output, new attention state)."""
        h = self.self_attn_layer_norm(x_new)
        h, attention_state = self.self_attn.stream_self(h, attention_state, block=block)
        x = x_new + self.dropout(h)
        return self.ffn(x), attention_state


class LeapS2TEncoder(FairseqEncoder):
    """Subsampler, sinusoidal positions and pre-norm encoder layers, offline and streaming."""

    def __init__(self, args):
        super().__init__(None)
        if args.encoder_attention_mask not in ENCODER_MASKS:
            raise ValueError(f"--encoder-attention-mask must be one of {ENCODER_MASKS}, got {args.encoder_attention_mask!r}")
        self.attention_mask = args.encoder_attention_mask
        self.attention_type = args.encoder_attention_type
        self.block_size = args.fixed_pre_decision_ratio
        self.embed_dim = args.encoder_embed_dim
        self.max_source_positions = args.max_source_positions
        self.input_dim = args.input_feat_per_channel * args.input_channels
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(args.encoder_embed_dim)
        self.subsample = Conv1dSubsampler(
            self.input_dim,
            args.conv_channels,
            args.encoder_embed_dim,
            parse_int_list(args.conv_kernel_sizes, "--conv-kernel-sizes"),
            causal=self.attention_mask != "full",
        )
        self.layers = nn.ModuleList(EncoderLayer(args) for _ in range(args.encoder_layers))
        self.layer_norm = LayerNorm(args.encoder_embed_dim)

    @property
    def streams_incrementally(self) -> bool:
        """True when :meth:`stream` processes only the new input (causal and chunk masks).

        False for the ``full`` mask, whose states depend on future input, so
        streaming re-encodes the whole prefix on every call.
        """
        return self.attention_mask != "full"

    def _embed(self, x: Tensor, first_position: int) -> Tensor:
        positions = torch.arange(first_position, first_position + x.size(0), device=x.device)
        x = self.embed_scale * x + sinusoidal_positions(positions, self.embed_dim).to(x.dtype).unsqueeze(1)
        return self.dropout_module(x)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, return_all_hiddens: bool = False):
        """Encode a padded batch of features.

        Args:
            src_tokens: (B, T_frames, C_feat) features, right-padded.
            src_lengths: LongTensor (B,) valid frames.

        Returns:
            fairseq's encoder-output dictionary: ``encoder_out`` [(T_enc, B, C)],
            ``encoder_padding_mask`` [(B, T_enc)] (True at padding),
            ``encoder_lengths`` [(B,)], ``encoder_states`` (per layer when
            ``return_all_hiddens``).
        """
        x, lengths = self.subsample(src_tokens, src_lengths)
        x = self._embed(x, 0)
        padding_mask = lengths_to_padding_mask(lengths)
        prefix_lengths = None
        if self.attention_mask == "chunk":
            prefix_lengths = chunk_prefix_lengths(x.size(0), lengths, self.block_size)
        hidden_states = []
        for layer in self.layers:
            x = layer(x, padding_mask, prefix_lengths)
            if return_all_hiddens:
                hidden_states.append(x)
        x = self.layer_norm(x)
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask],
            "encoder_lengths": [lengths],
            "encoder_embedding": [],
            "encoder_states": hidden_states,
            "src_tokens": [],
            "src_lengths": [src_lengths],
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        reordered = {}
        for key, values in encoder_out.items():
            if key in ("encoder_out", "encoder_states"):
                reordered[key] = [value.index_select(1, new_order) for value in values]
            else:
                reordered[key] = [value.index_select(0, new_order) for value in values]
        return reordered

    def max_positions(self):
        return self.max_source_positions

    # ------------------------------------------------------------------
    # streaming
    # ------------------------------------------------------------------

    def init_stream_state(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> EncoderStreamState:
        if not self.streams_incrementally:
            return EncoderStreamState(features=torch.zeros(batch_size, 0, self.input_dim, device=device, dtype=dtype))
        return EncoderStreamState(
            subsampler=self.subsample.init_state(batch_size, device, dtype),
            layers=[layer.self_attn.init_state(batch_size, device, dtype) for layer in self.layers],
        )

    def stream(self, features_new: Tensor, state: EncoderStreamState, finished: bool = False) -> Tuple[Tensor, EncoderStreamState]:
        """Encode new feature frames (B, T_new, C_feat).

        Returns (states, state). With ``streams_incrementally`` the states are
        the new encoder states (T_out, B, C), T_out possibly 0; together the
        calls emit exactly the offline encoder output. Otherwise the states
        are a fresh encoding of the whole prefix, which replaces all earlier
        ones.
        """
        if state.finished:
            raise RuntimeError("stream() called after the source was marked finished; start a new stream state")
        if features_new.dim() != 3 or features_new.size(2) != self.input_dim:
            raise ValueError(f"expected features of shape (batch, frames, {self.input_dim}), got {tuple(features_new.shape)}")
        if not self.streams_incrementally:
            return self._stream_reencode(features_new, state, finished)

        x, subsampler_state = self.subsample.stream(features_new, state.subsampler)
        x = self._embed(x, state.num_subsampled)
        num_subsampled = state.num_subsampled + x.size(0)
        if state.pending is not None:
            x = torch.cat([state.pending, x], dim=0)

        layer_states = list(state.layers)
        outputs = []
        if self.attention_mask == "causal":
            if x.size(0) > 0:
                outputs.append(self._run_layers(x, layer_states, block=False))
            pending = None
        else:
            num_complete = x.size(0) // self.block_size * self.block_size
            for start in range(0, num_complete, self.block_size):
                outputs.append(self._run_layers(x[start : start + self.block_size], layer_states, block=True))
            pending = x[num_complete:]
            if finished and pending.size(0) > 0:
                outputs.append(self._run_layers(pending, layer_states, block=True))
            if pending.size(0) == 0 or finished:
                pending = None

        if outputs:
            out = torch.cat(outputs, dim=0)
        else:
            out = x.new_zeros(0, features_new.size(0), self.embed_dim)
        new_state = EncoderStreamState(
            subsampler=subsampler_state,
            layers=layer_states,
            pending=pending,
            num_subsampled=num_subsampled,
            num_states_out=state.num_states_out + out.size(0),
            finished=finished,
        )
        return out, new_state

    def _run_layers(self, x: Tensor, layer_states: list, block: bool) -> Tensor:
        for i, layer in enumerate(self.layers):
            x, layer_states[i] = layer.stream(x, layer_states[i], block=block)
        return self.layer_norm(x)

    def _stream_reencode(self, features_new: Tensor, state: EncoderStreamState, finished: bool):
        features = torch.cat([state.features, features_new.to(state.features.dtype)], dim=1)
        batch_size = features.size(0)
        if features.size(1) == 0:
            out = features.new_zeros(0, batch_size, self.embed_dim)
        else:
            lengths = torch.full((batch_size,), features.size(1), dtype=torch.long, device=features.device)
            out = self.forward(features, lengths)["encoder_out"][0]
        new_state = EncoderStreamState(features=features, num_states_out=out.size(0), finished=finished)
        return out, new_state


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention, FFN."""

    def __init__(self, args):
        super().__init__()
        dim = args.decoder_embed_dim
        self.self_attn = build_attention(
            args, dim, args.decoder_attention_heads, args.decoder_attention_type, causal=True, self_attention=True
        )
        self.self_attn_layer_norm = LayerNorm(dim)
        self.encoder_attn = build_attention(
            args,
            dim,
            args.decoder_attention_heads,
            args.cross_attention_type,
            causal=False,
            kdim=args.encoder_embed_dim,
            vdim=args.encoder_embed_dim,
            encoder_decoder_attention=True,
        )
        self.encoder_attn_layer_norm = LayerNorm(dim)
        self.dropout = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.ffn = FeedForward(dim, args.decoder_ffn_embed_dim, args)

    def forward(
        self,
        x: Tensor,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor],
        cross_prefix_lengths: Optional[Tensor],
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        query_offset: int = 0,
    ) -> Tensor:
        """x: (T, B, C) targets; encoder_out: (S, B, C); cross_prefix_lengths: (B, T) or None.

        With ``incremental_state`` x is the single step ``query_offset``.
        """
        h = self.self_attn_layer_norm(x)
        h, _ = self.self_attn(query=h, key=h, value=h, incremental_state=incremental_state, need_weights=False)
        x = x + self.dropout(h)
        h = self.encoder_attn_layer_norm(x)
        if incremental_state is None:
            h, _ = self.encoder_attn(
                query=h,
                key=encoder_out,
                value=encoder_out,
                key_padding_mask=encoder_padding_mask,
                need_weights=False,
                prefix_lengths=cross_prefix_lengths,
            )
        else:
            h = self._cross_attention_step(h, encoder_out, encoder_padding_mask, cross_prefix_lengths, query_offset)
        x = x + self.dropout(h)
        return self.ffn(x)

    def _cross_attention_step(self, query, encoder_out, encoder_padding_mask, cross_prefix_lengths, query_offset: int) -> Tensor:
        """Attend one decoder step (1, B, C) to its wait-k prefix of encoder_out (S, B, C).

        Runs through the streaming methods: keys at or beyond the step's
        prefix length are passed as padding, and the query gets its absolute
        position (cosFormer uses it). The keys are projected again at every
        step because the visible prefix grows with the step.
        """
        source_len = encoder_out.size(0)
        masked_keys = torch.arange(source_len, device=query.device).unsqueeze(0) >= cross_prefix_lengths[:, -1:].to(query.device)
        if encoder_padding_mask is not None:
            masked_keys = masked_keys | encoder_padding_mask.to(masked_keys.device)
        state = self.encoder_attn.init_state(query.size(1), query.device, encoder_out.dtype)
        state = self.encoder_attn.extend_source(encoder_out, state, source_padding_mask=masked_keys)
        return self.encoder_attn.attend_source(query, state, query_offset=query_offset)

    def step(self, x: Tensor, self_state, cross_state, position: int):
        """One streaming step on x (1, B, C) at target position ``position``; returns (output, new self-attention state)."""
        h = self.self_attn_layer_norm(x)
        h, self_state = self.self_attn.stream_self(h, self_state)
        x = x + self.dropout(h)
        h = self.encoder_attn.attend_source(self.encoder_attn_layer_norm(x), cross_state, query_offset=position)
        x = x + self.dropout(h)
        return self.ffn(x), self_state


class LeapS2TDecoder(FairseqIncrementalDecoder):
    """Pre-norm Transformer decoder whose cross-attention follows the wait-k schedule."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.embed_dim = args.decoder_embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = args.max_target_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(args.decoder_embed_dim)
        self.dropout_module = FairseqDropout(args.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.decoder_layers))
        self.layer_norm = LayerNorm(args.decoder_embed_dim)
        self.fixed_pre_decision_ratio = args.fixed_pre_decision_ratio
        self.waitk_lagging = args.waitk_lagging
        self.waitk_lagging_train = (
            parse_int_list(args.waitk_lagging_train, "--waitk-lagging-train") if args.waitk_lagging_train else None
        )
        for k in [self.waitk_lagging] + (self.waitk_lagging_train or []):
            check_waitk_arguments(k, self.fixed_pre_decision_ratio)
        self.seed = args.seed if getattr(args, "seed", None) is not None else 1
        self.num_updates = 0

    def set_num_updates(self, num_updates: int):
        self.num_updates = num_updates

    def current_waitk(self) -> Optional[int]:
        """Return the lagging used by this forward pass.

        In training with ``--waitk-lagging-train`` one value is drawn per
        update from a generator seeded with (seed, update number), so a rerun
        and every data-parallel worker draw the same value. Otherwise it is
        ``--waitk-lagging`` (None means the whole source is visible).
        """
        if self.training and self.waitk_lagging_train:
            generator = random.Random(self.seed * 1_000_003 + self.num_updates)
            return generator.choice(self.waitk_lagging_train)
        return self.waitk_lagging

    def _embed(self, tokens: Tensor, first_position: int) -> Tensor:
        positions = torch.arange(first_position, first_position + tokens.size(1), device=tokens.device)
        x = self.embed_scale * self.embed_tokens(tokens)
        x = x + sinusoidal_positions(positions, self.embed_dim).to(x.dtype).unsqueeze(0)
        return self.dropout_module(x).transpose(0, 1)

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
    ):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(self, prev_output_tokens: Tensor, encoder_out, incremental_state=None, **unused):
        """Return (B, T, C) features and fairseq's extra dict.

        With ``incremental_state`` (fairseq's sequence generator) only the last
        token is run; its index ``prev_output_tokens.size(1) - 1`` is the
        decoder step, which sets its position and its wait-k source prefix.
        """
        if encoder_out is None:
            raise ValueError("the speech decoder needs encoder_out")
        first_position = 0
        tokens = prev_output_tokens
        if incremental_state is not None:
            first_position = prev_output_tokens.size(1) - 1
            tokens = prev_output_tokens[:, -1:]
        x = self._embed(tokens, first_position)

        source = encoder_out["encoder_out"][0]
        source_padding_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        source_lengths = _encoder_lengths(encoder_out)
        cross_prefix_lengths = waitk_prefix_lengths(
            x.size(0), source_lengths, self.current_waitk(), self.fixed_pre_decision_ratio, first_target_index=first_position
        )
        inner_states = [x]
        for layer in self.layers:
            x = layer(x, source, source_padding_mask, cross_prefix_lengths, incremental_state, first_position)
            inner_states.append(x)
        x = self.layer_norm(x)
        return x.transpose(0, 1), {"attn": [None], "inner_states": inner_states}

    def output_layer(self, features: Tensor) -> Tensor:
        return F.linear(features, self.embed_tokens.weight)

    def max_positions(self):
        return self.max_target_positions

    # ------------------------------------------------------------------
    # streaming
    # ------------------------------------------------------------------

    def init_stream_state(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> DecoderStreamState:
        return DecoderStreamState(
            self_attention=[layer.self_attn.init_state(batch_size, device, dtype) for layer in self.layers],
            cross_attention=[layer.encoder_attn.init_state(batch_size, device, dtype) for layer in self.layers],
        )

    def extend_source(self, source_new: Tensor, state: DecoderStreamState) -> DecoderStreamState:
        """Feed encoder states (S, B, C) to every layer's cross-attention state."""
        cross = [
            layer.encoder_attn.extend_source(source_new, layer_state)
            for layer, layer_state in zip(self.layers, state.cross_attention)
        ]
        return DecoderStreamState(
            self_attention=state.self_attention,
            cross_attention=cross,
            num_steps=state.num_steps,
            num_source_states_fed=state.num_source_states_fed + source_new.size(0),
        )

    def step(self, prev_tokens: Tensor, state: DecoderStreamState) -> Tuple[Tensor, DecoderStreamState]:
        """Run one step on prev_tokens (B,); return (B, V) log-probabilities and the new state."""
        if state.num_source_states_fed == 0:
            raise RuntimeError("decoder step before any encoder state was fed to the cross-attention: read source first")
        x = self._embed(prev_tokens.view(-1, 1), state.num_steps)
        self_states = list(state.self_attention)
        for i, layer in enumerate(self.layers):
            x, self_states[i] = layer.step(x, self_states[i], state.cross_attention[i], state.num_steps)
        logits = self.output_layer(self.layer_norm(x)).squeeze(0)
        log_probs = utils.log_softmax(logits, dim=-1)
        new_state = DecoderStreamState(
            self_attention=self_states,
            cross_attention=state.cross_attention,
            num_steps=state.num_steps + 1,
            num_source_states_fed=state.num_source_states_fed,
        )
        return log_probs, new_state


def _encoder_lengths(encoder_out: Dict[str, List[Tensor]]) -> Tensor:
    if encoder_out.get("encoder_lengths"):
        return encoder_out["encoder_lengths"][0]
    source = encoder_out["encoder_out"][0]
    if encoder_out.get("encoder_padding_mask"):
        return (~encoder_out["encoder_padding_mask"][0]).long().sum(dim=1)
    return torch.full((source.size(1),), source.size(0), dtype=torch.long, device=source.device)


@register_model("leap_s2t_waitk")
class LeapS2TWaitkModel(FairseqEncoderDecoderModel):
    """Speech-to-text Transformer with LeaP (or softmax, ReLU, cosFormer) attention and wait-k decoding.

    Streaming API (one :class:`StreamState` per batch of utterances streamed
    together)::

        state = model.init_stream_state(device, batch_size=1)
        states, state = model.stream_encoder(frames, state, finished=False)
        while model.should_write(state):
            state = model.feed_visible_source(state)
            log_probs, state = model.decoder_step(prev_token, state)
    """

    @staticmethod
    def add_args(parser):
        parser.add_argument("--conv-kernel-sizes", type=str, metavar="STR", help="comma-separated odd kernel sizes of the stride-2 subsampling convolutions")
        parser.add_argument("--conv-channels", type=int, metavar="N", help="channels between the subsampling convolutions")
        parser.add_argument("--activation-fn", choices=utils.get_available_activation_fns(), help="activation function of the FFN")
        parser.add_argument("--dropout", type=float, metavar="D", help="dropout probability")
        parser.add_argument("--attention-dropout", type=float, metavar="D", help="dropout probability of attention weights")
        parser.add_argument("--activation-dropout", type=float, metavar="D", help="dropout probability after the FFN activation")
        parser.add_argument("--encoder-embed-dim", type=int, metavar="N", help="encoder dimension")
        parser.add_argument("--encoder-ffn-embed-dim", type=int, metavar="N", help="encoder FFN hidden dimension")
        parser.add_argument("--encoder-layers", type=int, metavar="N", help="number of encoder layers")
        parser.add_argument("--encoder-attention-heads", type=int, metavar="N", help="encoder attention heads")
        parser.add_argument("--decoder-embed-dim", type=int, metavar="N", help="decoder dimension")
        parser.add_argument("--decoder-ffn-embed-dim", type=int, metavar="N", help="decoder FFN hidden dimension")
        parser.add_argument("--decoder-layers", type=int, metavar="N", help="number of decoder layers")
        parser.add_argument("--decoder-attention-heads", type=int, metavar="N", help="decoder attention heads")
        parser.add_argument("--no-scale-embedding", action="store_true", help="do not scale embeddings by sqrt(dimension)")
        parser.add_argument("--encoder-attention-type", choices=ATTENTION_TYPES, help="encoder self-attention type")
        parser.add_argument("--decoder-attention-type", choices=ATTENTION_TYPES, help="decoder self-attention type")
        parser.add_argument("--cross-attention-type", choices=ATTENTION_TYPES, help="decoder cross-attention type")
        parser.add_argument("--leap-hidden-ratio", type=int, metavar="R", help="LeaP's proportion module maps head dimension d_h to d_h / R to 1; R must divide d_h")
        parser.add_argument("--cosformer-horizon", type=int, metavar="N", help="sequence length that cosFormer's position re-weighting is scaled to")
        parser.add_argument(
            "--encoder-attention-mask",
            choices=ENCODER_MASKS,
            help="full: bidirectional (streaming re-encodes the prefix); causal: past only; "
            "chunk: past plus the rest of the own pre-decision block",
        )
        parser.add_argument("--waitk-lagging", type=int, metavar="K", help="wait-k lagging in source chunks for validation, generation and streaming (unset: the whole source is visible)")
        parser.add_argument("--waitk-lagging-train", type=str, metavar="K1,K2,...", help="training lagging values; one is drawn per update (default: --waitk-lagging)")
        parser.add_argument("--fixed-pre-decision-ratio", type=int, metavar="R", help="encoder states per source chunk (9 states of 40 ms = 360 ms)")
        parser.add_argument("--load-pretrained-encoder-from", type=str, metavar="CKPT", help="initialise the encoder from this checkpoint of the same architecture (an ASR model)")

    @classmethod
    def build_encoder(cls, args):
        encoder = LeapS2TEncoder(args)
        checkpoint = getattr(args, "load_pretrained_encoder_from", None)
        if checkpoint:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"--load-pretrained-encoder-from {checkpoint}: file not found")
            encoder = checkpoint_utils.load_pretrained_component_from_model(component=encoder, checkpoint=checkpoint)
            logger.info("loaded the pretrained encoder from %s", checkpoint)
        return encoder

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        if args.encoder_embed_dim % args.encoder_attention_heads or args.decoder_embed_dim % args.decoder_attention_heads:
            raise ValueError("embedding dimensions must be divisible by the number of attention heads")
        # The checkpoint records the vocabulary it was trained with, so that
        # decoding with another dictionary or SentencePiece model fails loudly.
        record_or_check_vocabulary(args, task)
        dictionary = task.target_dictionary
        embed_tokens = nn.Embedding(len(dictionary), args.decoder_embed_dim, padding_idx=dictionary.pad())
        nn.init.normal_(embed_tokens.weight, mean=0, std=args.decoder_embed_dim**-0.5)
        nn.init.constant_(embed_tokens.weight[dictionary.pad()], 0)
        encoder = cls.build_encoder(args)
        decoder = LeapS2TDecoder(args, dictionary, embed_tokens)
        return cls(encoder, decoder)

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        encoder_out = self.encoder(src_tokens=src_tokens, src_lengths=src_lengths)
        return self.decoder(prev_output_tokens=prev_output_tokens, encoder_out=encoder_out)

    # ------------------------------------------------------------------
    # streaming API
    # ------------------------------------------------------------------

    @property
    def encoder_streams_incrementally(self) -> bool:
        """True when stream_encoder costs time for the new input only; False when it re-encodes the prefix."""
        return self.encoder.streams_incrementally

    @property
    def waitk_lagging(self) -> Optional[int]:
        return self.decoder.waitk_lagging

    @property
    def fixed_pre_decision_ratio(self) -> int:
        return self.decoder.fixed_pre_decision_ratio

    def init_stream_state(self, device=None, batch_size: int = 1, dtype: Optional[torch.dtype] = None, waitk_lagging="model") -> StreamState:
        """Return the state before any input for ``batch_size`` utterances streamed together.

        ``waitk_lagging`` overrides the model's k for this stream (None: wait
        for the whole source).
        """
        parameter = next(self.parameters())
        device = parameter.device if device is None else torch.device(device)
        dtype = parameter.dtype if dtype is None else dtype
        k = self.waitk_lagging if waitk_lagging == "model" else waitk_lagging
        check_waitk_arguments(k, self.fixed_pre_decision_ratio)
        return StreamState(
            encoder=self.encoder.init_stream_state(batch_size, device, dtype),
            decoder=self.decoder.init_stream_state(batch_size, device, dtype),
            waitk_lagging=k,
            fixed_pre_decision_ratio=self.fixed_pre_decision_ratio,
            batch_size=batch_size,
        )

    def stream_encoder(self, features_new: Tensor, state: StreamState, finished: bool = False) -> Tuple[Tensor, StreamState]:
        """Encode new frames, (T_new, C_feat) or (B, T_new, C_feat).

        Returns (encoder states, state). With ``encoder_streams_incrementally``
        these are the new states (T_out, B, C); otherwise the whole re-encoded
        prefix. Either way the state records them for :meth:`feed_visible_source`.
        """
        if features_new.dim() == 2:
            features_new = features_new.unsqueeze(0)
        if features_new.size(0) != state.batch_size:
            raise ValueError(f"stream state is for batch size {state.batch_size}, got features of shape {tuple(features_new.shape)}")
        out, encoder_state = self.encoder.stream(features_new, state.encoder, finished=finished)
        state.encoder = encoder_state
        if self.encoder_streams_incrementally:
            if state.unfed_encoder_states is None or state.unfed_encoder_states.size(0) == 0:
                state.unfed_encoder_states = out
            else:
                state.unfed_encoder_states = torch.cat([state.unfed_encoder_states, out], dim=0)
        else:
            state.encoder_out = out
            state.reencoded = True
        return out, state

    def extend_cross_attention(self, new_encoder_states: Tensor, state: StreamState) -> StreamState:
        """Feed encoder states (S, B, C) to every decoder layer's cross-attention, bypassing the schedule."""
        state.decoder = self.decoder.extend_source(new_encoder_states, state.decoder)
        return state

    def should_write(self, state: StreamState) -> bool:
        """Return True when the wait-k schedule lets the next target token be written now."""
        return waitk_should_write(
            state.encoder.num_states_out,
            state.encoder.finished,
            state.decoder.num_steps,
            state.waitk_lagging,
            state.fixed_pre_decision_ratio,
        )

    def feed_visible_source(self, state: StreamState) -> StreamState:
        """Feed the cross-attention every encoder state that the next target token may see.

        The next token (index ``state.decoder.num_steps``) sees
        ``waitk_source_budget(...)`` states; the ones beyond stay in
        ``state.unfed_encoder_states`` for later tokens. On the re-encoding
        path a new encoding replaces the cross-attention states.
        """
        budget = waitk_source_budget(
            state.decoder.num_steps,
            state.encoder.num_states_out,
            state.waitk_lagging,
            state.fixed_pre_decision_ratio,
        )
        if not self.encoder_streams_incrementally:
            if state.reencoded:
                parameter = next(self.parameters())
                fresh = self.decoder.init_stream_state(state.batch_size, parameter.device, state.encoder_out.dtype)
                state.decoder = DecoderStreamState(
                    self_attention=state.decoder.self_attention,
                    cross_attention=fresh.cross_attention,
                    num_steps=state.decoder.num_steps,
                )
                state.reencoded = False
            fed = state.decoder.num_source_states_fed
            if budget > fed:
                state.decoder = self.decoder.extend_source(state.encoder_out[fed:budget], state.decoder)
            return state

        take = budget - state.decoder.num_source_states_fed
        if take > 0:
            state.decoder = self.decoder.extend_source(state.unfed_encoder_states[:take], state.decoder)
            state.unfed_encoder_states = state.unfed_encoder_states[take:]
        return state

    def decoder_step(self, prev_token, state: StreamState) -> Tuple[Tensor, StreamState]:
        """Run one decoder step on the previous token (int, or LongTensor (B,)); return ((B, V) log-probs, state).

        The first step takes the end-of-sentence symbol, as fairseq's
        generator does. The cross-attention sees what has been fed so far.
        """
        if not torch.is_tensor(prev_token):
            prev_token = torch.tensor([prev_token] * state.batch_size, device=next(self.parameters()).device)
        log_probs, state.decoder = self.decoder.step(prev_token.view(-1), state.decoder)
        return log_probs, state


def base_architecture(args):
    args.conv_kernel_sizes = _default(args, "conv_kernel_sizes", "5,5")
    args.conv_channels = _default(args, "conv_channels", 1024)
    args.activation_fn = _default(args, "activation_fn", "relu")
    args.encoder_embed_dim = _default(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = _default(args, "encoder_ffn_embed_dim", 2048)
    args.encoder_layers = _default(args, "encoder_layers", 12)
    args.encoder_attention_heads = _default(args, "encoder_attention_heads", 8)
    args.decoder_embed_dim = _default(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.decoder_ffn_embed_dim = _default(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.decoder_layers = _default(args, "decoder_layers", 6)
    args.decoder_attention_heads = _default(args, "decoder_attention_heads", 8)
    args.dropout = _default(args, "dropout", 0.1)
    args.attention_dropout = _default(args, "attention_dropout", args.dropout)
    args.activation_dropout = _default(args, "activation_dropout", args.dropout)
    args.no_scale_embedding = getattr(args, "no_scale_embedding", False)
    args.encoder_attention_type = _default(args, "encoder_attention_type", "leap")
    args.decoder_attention_type = _default(args, "decoder_attention_type", "leap")
    args.cross_attention_type = _default(args, "cross_attention_type", "leap")
    args.leap_hidden_ratio = _default(args, "leap_hidden_ratio", 4)
    args.cosformer_horizon = _default(args, "cosformer_horizon", 1024)
    args.encoder_attention_mask = _default(args, "encoder_attention_mask", "chunk")
    args.waitk_lagging = getattr(args, "waitk_lagging", None)
    args.waitk_lagging_train = getattr(args, "waitk_lagging_train", None)
    args.fixed_pre_decision_ratio = _default(args, "fixed_pre_decision_ratio", 9)
    args.max_source_positions = _default(args, "max_source_positions", 6000)
    args.max_target_positions = _default(args, "max_target_positions", 1024)
    args.load_pretrained_encoder_from = getattr(args, "load_pretrained_encoder_from", None)
    for name in (
        "conv_channels", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
        "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads",
        "fixed_pre_decision_ratio", "max_source_positions", "max_target_positions",
    ):
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if args.encoder_embed_dim != args.decoder_embed_dim:
        raise ValueError(
            f"encoder and decoder dimensions must match (got {args.encoder_embed_dim} and {args.decoder_embed_dim})"
        )


def _default(args, name: str, value):
    """Return ``args.name``, or ``value`` when it is unset (None); 0 and "" count as set."""
    current = getattr(args, name, None)
    return value if current is None else current


@register_model_architecture("leap_s2t_waitk", "leap_s2t_waitk")
def leap_s2t_waitk(args):
    base_architecture(args)


@register_model_architecture("leap_s2t_waitk", "leap_s2t_waitk_s")
def leap_s2t_waitk_s(args):
    """ESPnet-style convtransformer size used for MuST-C simultaneous baselines."""
    args.encoder_embed_dim = _default(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = _default(args, "encoder_ffn_embed_dim", 2048)
    args.encoder_layers = _default(args, "encoder_layers", 12)
    args.encoder_attention_heads = _default(args, "encoder_attention_heads", 4)
    args.decoder_layers = _default(args, "decoder_layers", 6)
    args.decoder_attention_heads = _default(args, "decoder_attention_heads", 4)
    args.conv_channels = _default(args, "conv_channels", 256)
    base_architecture(args)


@register_model_architecture("leap_s2t_waitk", "leap_s2t_waitk_tiny")
def leap_s2t_waitk_tiny(args):
    """64 dimensions, 2 encoder and 2 decoder layers, 2 heads: for CPU tests."""
    args.encoder_embed_dim = _default(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = _default(args, "encoder_ffn_embed_dim", 128)
    args.encoder_layers = _default(args, "encoder_layers", 2)
    args.encoder_attention_heads = _default(args, "encoder_attention_heads", 2)
    args.decoder_layers = _default(args, "decoder_layers", 2)
    args.decoder_attention_heads = _default(args, "decoder_attention_heads", 2)
    args.conv_channels = _default(args, "conv_channels", 64)
    base_architecture(args)
