"""Attention modules, feature maps and the convolutional subsampler."""

from leap_fairseq.modules.feature_maps import (
    CosformerFeatureMap,
    FeatureMap,
    LeapFeatureMap,
    ProportionModule,
    ReluFeatureMap,
    build_feature_map,
    cosine_weighted_features,
)
from leap_fairseq.modules.leap_attention import (
    ATTENTION_TYPES,
    LINEAR_TYPES,
    AttentionStreamState,
    LeapMultiheadAttention,
)

__all__ = [
    "ATTENTION_TYPES",
    "AttentionStreamState",
    "CosformerFeatureMap",
    "FeatureMap",
    "LINEAR_TYPES",
    "LeapFeatureMap",
    "LeapMultiheadAttention",
    "ProportionModule",
    "ReluFeatureMap",
    "build_feature_map",
    "cosine_weighted_features",
]
