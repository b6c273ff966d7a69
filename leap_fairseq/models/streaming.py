"""Explicit state types of the streaming speech-to-text model.

One :class:`StreamState` follows one batch of utterances that are streamed
together (every utterance of the batch receives the same number of frames per
call). The per-layer attention states are
``leap_fairseq.modules.leap_attention.AttentionStreamState`` objects, owned and
updated by ``LeapMultiheadAttention``; they are typed as ``Any`` here so that
this module imports without the attention module.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from torch import Tensor

from leap_fairseq.modules.subsampler import SubsamplerState


@dataclass
class EncoderStreamState:
    """Streaming state of the speech encoder.

    Attributes:
        subsampler: convolution left context (causal and chunk masks), None
            on the re-encoding path.
        layers: one attention state per encoder layer (causal and chunk masks).
        pending: (T_p, B, C) subsampled states with positions added that wait
            for their pre-decision block to complete (chunk mask only; T_p <
            block), or None.
        num_subsampled: subsampled states produced so far; the next one gets
            this absolute position.
        num_states_out: encoder states emitted so far.
        features: (B, T, C_feat) every frame received so far (re-encoding path
            only), or None.
        finished: True once the caller has signalled that the source ended.
    """

    subsampler: Optional[SubsamplerState] = None
    layers: List[Any] = field(default_factory=list)
    pending: Optional[Tensor] = None
    num_subsampled: int = 0
    num_states_out: int = 0
    features: Optional[Tensor] = None
    finished: bool = False


@dataclass
class DecoderStreamState:
    """Streaming state of the decoder.

    Attributes:
        self_attention: one causal self-attention state per decoder layer.
        cross_attention: one cross-attention source state per decoder layer,
            holding the projected encoder states fed so far.
        num_steps: decoder steps run so far; the next step predicts target
            token ``num_steps`` (0-based) and uses position ``num_steps``.
        num_source_states_fed: encoder states fed to the cross-attention.
    """

    self_attention: List[Any] = field(default_factory=list)
    cross_attention: List[Any] = field(default_factory=list)
    num_steps: int = 0
    num_source_states_fed: int = 0


@dataclass
class StreamState:
    """Everything the model carries between calls for one streamed batch.

    Attributes:
        encoder: the encoder's state.
        decoder: the decoder's state.
        unfed_encoder_states: (T_u, B, C) encoder states emitted but not yet
            fed to the cross-attention, because the wait-k schedule does not
            let the next target token see them yet.
        reencoded: True when the re-encoding path produced a new encoding of
            the whole prefix that the cross-attention has not seen; the next
            feed then rebuilds the cross-attention states from the start.
        encoder_out: (T_enc, B, C) the latest complete encoding of the prefix
            (re-encoding path only), or None.
        waitk_lagging: k of the schedule used by this stream (None: offline,
            every token waits for the whole source).
        fixed_pre_decision_ratio: encoder states per source chunk.
        batch_size: B.
    """

    encoder: EncoderStreamState
    decoder: DecoderStreamState
    unfed_encoder_states: Optional[Tensor] = None
    reencoded: bool = False
    encoder_out: Optional[Tensor] = None
    waitk_lagging: Optional[int] = None
    fixed_pre_decision_ratio: int = 1
    batch_size: int = 1
