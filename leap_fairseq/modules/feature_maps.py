"""Feature maps that turn projected queries and keys into linear-attention features.

All three maps start from ReLU(x) of each head's projected query or key x,
shaped (B, H, N, d_h):

- ``relu``: phi(x) = ReLU(x), F = d_h features.
- ``cosformer``: phi(x) = [ReLU(x) cos(pi/2 p), ReLU(x) sin(pi/2 p)], F = 2 d_h,
  with the proportion p = position / M (cosFormer's re-weighting). The product
  phi(q_i) . phi(k_j) = ReLU(q_i) . ReLU(k_j) cos(pi/2 (p_i - p_j)).
- ``leap``: the same cosine re-weighting, but p is predicted from the token:
  p = sigmoid(W2 ReLU(W1 ReLU(x))) with W1: d_h -> d_h / r and W2: d_h / r -> 1,
  one such module for queries and one for keys, shared by all heads.

Positions are absolute indices (0, 1, ...). Streaming callers pass the
index of the first new position as ``offset`` (or the positions themselves)
so that a piece gets the features it would get inside the whole sequence.
``proportions`` returns p for plots and analysis.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

QUERY = "query"
KEY = "key"

OffsetLike = Union[int, Tensor]
LengthLike = Union[int, float, Tensor, None]


def cosine_weighted_features(relu_x: Tensor, proportions: Tensor) -> Tensor:
    """Return [relu_x cos(pi/2 p), relu_x sin(pi/2 p)] along the last axis.

    Args:
        relu_x: (B, H, N, d_h) non-negative features.
        proportions: (B, H, N) or broadcastable to it, p in [0, 1].

    Returns:
        (B, H, N, 2 d_h).
    """
    angle = (math.pi / 2) * proportions.to(relu_x.dtype)
    weights = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1).expand(relu_x.shape[:-1] + (2,))
    # One product into a (..., 2, d_h) buffer whose reshape is [cos part, sin part], without a cat.
    features = relu_x.unsqueeze(-2) * weights.unsqueeze(-1)
    return features.reshape(relu_x.shape[:-1] + (2 * relu_x.shape[-1],))


def absolute_positions(length: int, device, offset: OffsetLike = 0, positions: Optional[Tensor] = None) -> Tensor:
    """Return positions as a (B or 1, N) LongTensor: ``positions`` if given, else offset + arange(N).

    ``offset`` is an int or a (B,) LongTensor (one offset per sequence).
    """
    if positions is not None:
        positions = torch.as_tensor(positions, device=device)
        return positions.unsqueeze(0) if positions.dim() == 1 else positions
    steps = torch.arange(length, device=device)
    if isinstance(offset, Tensor):
        return offset.to(device).reshape(-1, 1) + steps.unsqueeze(0)
    return (steps + int(offset)).unsqueeze(0)


class FeatureMap(nn.Module):
    """Base class: maps (B, H, N, d_h) projections to (B, H, N, F) non-negative features."""

    #: F / d_h
    feature_multiplier = 1
    #: Whether the features depend on positions (then streaming needs offsets).
    uses_positions = False

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    @property
    def feature_dim(self) -> int:
        return self.feature_multiplier * self.head_dim

    def proportions(
        self,
        x: Tensor,
        kind: str,
        offset: OffsetLike = 0,
        positions: Optional[Tensor] = None,
        length: LengthLike = None,
    ) -> Optional[Tensor]:
        """Return the proportions p, (B, H, N), of projections x (B, H, N, d_h); None for ``relu``."""
        return None

    def forward(
        self,
        x: Tensor,
        kind: str,
        offset: OffsetLike = 0,
        positions: Optional[Tensor] = None,
        length: LengthLike = None,
    ) -> Tensor:
        """Map projections x (B, H, N, d_h) of ``kind`` ("query" or "key") to features (B, H, N, F).

        Args:
            offset: absolute index of the first position (int or (B,) LongTensor).
            positions: optional (N,) or (B, N) absolute indices, overriding ``offset``.
            length: M for ``cosformer`` (a number or a (B,) tensor); ignored by the others.
        """
        raise NotImplementedError


class ReluFeatureMap(FeatureMap):
    """phi(x) = ReLU(x)."""

    def forward(self, x, kind, offset=0, positions=None, length=None):
        _check_kind(kind)
        return torch.relu(x)


class CosformerFeatureMap(FeatureMap):
    """cosFormer's re-weighting with p = min(position / M, 1).

    Positions at or beyond M are clamped to p = 1. Without the clamp,
    cos(pi/2 p) turns negative for p > 1, the features are no longer
    non-negative, and the normaliser of causal attention approaches zero, so
    outputs grow without bound. With it, every token past M gets the same
    proportion, and the re-weighting no longer distinguishes far positions. That
    is the weakness of a fixed horizon that LeaP's learned proportions remove.
    A warning is logged once per feature map the first time it happens.
    """

    feature_multiplier = 2
    uses_positions = True

    def __init__(self, head_dim: int):
        super().__init__(head_dim)
        self.warned_beyond_horizon = False

    def proportions(self, x, kind, offset=0, positions=None, length=None):
        _check_kind(kind)
        if length is None:
            raise ValueError("the cosformer feature map needs the length M (p = position / M), got None")
        index = absolute_positions(x.shape[2], x.device, offset, positions)
        if isinstance(length, Tensor):
            scale = length.to(device=x.device).reshape(-1, 1).clamp(min=1)
        else:
            if length <= 0:
                raise ValueError(f"the cosformer length M must be positive, got {length}")
            scale = float(length)
        # float64 inputs get float64 proportions so that float64 checks stay exact.
        p = index.to(torch.float64 if x.dtype == torch.float64 else torch.float32) / scale
        if not self.warned_beyond_horizon and not isinstance(length, Tensor) and index.numel() and index.max() >= scale:
            logger.warning(
                "cosformer: position %d is at or beyond the horizon M=%d, so proportions are clamped to 1 and "
                "every position past M gets the same proportion; raise --cosformer-horizon to cover the "
                "longest sequence", int(index.max()), int(scale),
            )
            self.warned_beyond_horizon = True
        p = p.clamp(max=1.0)
        return p.unsqueeze(1).expand(x.shape[0], x.shape[1], x.shape[2])

    def forward(self, x, kind, offset=0, positions=None, length=None):
        p = self.proportions(x, kind, offset, positions, length)
        return cosine_weighted_features(torch.relu(x), p)


class ProportionModule(nn.Module):
    """LeaP's proportion predictor: Linear(d_h, d_h / r) -> ReLU -> Linear(d_h / r, 1) -> sigmoid."""

    def __init__(self, head_dim: int, hidden_ratio: int):
        super().__init__()
        hidden = head_dim // hidden_ratio
        self.hidden = nn.Linear(head_dim, hidden)
        self.output = nn.Linear(hidden, 1)

    def forward(self, relu_x: Tensor) -> Tensor:
        """Map (..., d_h) to proportions (...,) in (0, 1)."""
        return torch.sigmoid(self.output(torch.relu(self.hidden(relu_x)))).squeeze(-1)


class LeapFeatureMap(FeatureMap):
    """LeaP: cosine re-weighting with learned, token-dependent proportions.

    ``query_proportion`` and ``key_proportion`` read each head's ReLU(x) and
    are shared across heads. The proportions do not depend on positions, so
    the features of a token are the same offline and streaming.
    """

    feature_multiplier = 2

    def __init__(self, head_dim: int, hidden_ratio: int = 4):
        super().__init__(head_dim)
        if hidden_ratio < 1 or head_dim % hidden_ratio != 0:
            raise ValueError(
                f"leap_hidden_ratio r={hidden_ratio} must be a positive divisor of the head dimension "
                f"d_h={head_dim} (the proportion module's hidden layer has d_h / r units); "
                "choose r that divides d_h = embed_dim / num_heads"
            )
        self.hidden_ratio = hidden_ratio
        self.query_proportion = ProportionModule(head_dim, hidden_ratio)
        self.key_proportion = ProportionModule(head_dim, hidden_ratio)

    def proportions(self, x, kind, offset=0, positions=None, length=None):
        return self._proportions_of_relu(torch.relu(x), kind)

    def _proportions_of_relu(self, relu_x: Tensor, kind: str) -> Tensor:
        _check_kind(kind)
        module = self.query_proportion if kind == QUERY else self.key_proportion
        return module(relu_x)

    def forward(self, x, kind, offset=0, positions=None, length=None):
        relu_x = torch.relu(x)
        if type(self).proportions is LeapFeatureMap.proportions:
            p = self._proportions_of_relu(relu_x, kind)
        else:
            # A subclass replaced the proportions (for example with position / N in tests).
            p = self.proportions(x, kind, offset, positions, length)
        return cosine_weighted_features(relu_x, p)


FEATURE_MAPS = {"relu": ReluFeatureMap, "cosformer": CosformerFeatureMap, "leap": LeapFeatureMap}


def build_feature_map(attention_type: str, head_dim: int, leap_hidden_ratio: int = 4) -> FeatureMap:
    """Return the feature map named ``attention_type`` ("relu", "cosformer" or "leap")."""
    if attention_type not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {attention_type!r}; expected one of {sorted(FEATURE_MAPS)}")
    if attention_type == "leap":
        return LeapFeatureMap(head_dim, leap_hidden_ratio)
    return FEATURE_MAPS[attention_type](head_dim)


def _check_kind(kind: str) -> None:
    if kind not in (QUERY, KEY):
        raise ValueError(f"kind must be {QUERY!r} or {KEY!r}, got {kind!r}")
