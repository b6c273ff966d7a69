"""Linear-attention math on feature-mapped queries and keys, with naive references."""

from leap_fairseq.ops.linear_attention import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EPS,
    METHODS,
    LinearAttentionState,
    accumulate_state,
    attend_state,
    causal_linear_attention,
    noncausal_linear_attention,
    prefix_linear_attention,
    recurrent_linear_attention,
)
from leap_fairseq.ops.reference import (
    causal_linear_attention_reference,
    masked_linear_attention_reference,
    noncausal_linear_attention_reference,
    prefix_linear_attention_reference,
    recurrent_linear_attention_reference,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EPS",
    "METHODS",
    "LinearAttentionState",
    "accumulate_state",
    "attend_state",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "masked_linear_attention_reference",
    "noncausal_linear_attention",
    "noncausal_linear_attention_reference",
    "prefix_linear_attention",
    "prefix_linear_attention_reference",
    "recurrent_linear_attention",
    "recurrent_linear_attention_reference",
]
