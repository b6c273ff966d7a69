"""Feature maps: shapes, the cosine identity, positions and offsets, LeaP's proportions."""

import math

import pytest
import torch

import leap_fairseq  # noqa: F401  (applies the compat patches)
from leap_fairseq.modules.feature_maps import (
    CosformerFeatureMap,
    LeapFeatureMap,
    ReluFeatureMap,
    build_feature_map,
    cosine_weighted_features,
)
from leap_fairseq.ops import noncausal_linear_attention


def projections(batch=2, heads=3, length=37, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, head_dim, generator=generator, dtype=torch.float64)


def test_relu_features():
    x = projections()
    phi = ReluFeatureMap(8)(x, "query")
    assert torch.equal(phi, torch.relu(x))
    assert ReluFeatureMap(8).feature_dim == 8


@pytest.mark.parametrize("name", ["cosformer", "leap"])
def test_cosine_product_identity(name):
    feature_map = build_feature_map(name, 8).double()
    q, k = projections(length=11), projections(length=13, seed=1)
    phi_q = feature_map(q, "query", length=13)
    phi_k = feature_map(k, "key", length=13)
    assert phi_q.shape == (2, 3, 11, 16)
    p_q = feature_map.proportions(q, "query", length=13)
    p_k = feature_map.proportions(k, "key", length=13)
    assert p_q.shape == (2, 3, 11)
    expected = torch.einsum("bhid,bhjd->bhij", torch.relu(q), torch.relu(k)) * torch.cos(
        math.pi / 2 * (p_q[..., :, None] - p_k[..., None, :])
    )
    assert (torch.matmul(phi_q, phi_k.transpose(-1, -2)) - expected).abs().max() < 1e-12


def test_cosformer_proportions_are_position_over_length():
    x = projections(length=5)
    p = CosformerFeatureMap(8).proportions(x, "key", length=10)
    assert torch.allclose(p[0, 0], torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64))


def test_cosformer_offset_matches_slice():
    feature_map = CosformerFeatureMap(8)
    x = projections(length=37)
    whole = feature_map(x, "key", length=64)
    piece = feature_map(x[:, :, 20:], "key", offset=20, length=64)
    assert (whole[:, :, 20:] - piece).abs().max() < 1e-12
    per_batch = feature_map(x[:, :, 20:], "key", offset=torch.tensor([20, 20]), length=64)
    assert (whole[:, :, 20:] - per_batch).abs().max() < 1e-12


def test_cosformer_needs_length():
    with pytest.raises(ValueError, match="length M"):
        CosformerFeatureMap(8)(projections(), "query")


class PositionProportionLeap(LeapFeatureMap):
    """LeaP whose proportion modules are replaced by position / N."""

    def __init__(self, head_dim, length):
        super().__init__(head_dim)
        self.length = length

    def proportions(self, x, kind, offset=0, positions=None, length=None):
        index = torch.arange(x.shape[2], dtype=x.dtype)
        return (index / self.length).expand(x.shape[0], x.shape[1], -1)


def test_cosformer_equals_leap_with_position_proportions():
    length = 37
    q, k, v = projections(length=length), projections(length=length, seed=1), projections(length=length, seed=2)
    cosformer = CosformerFeatureMap(8)
    leap = PositionProportionLeap(8, length)
    out_cosformer = noncausal_linear_attention(
        cosformer(q, "query", length=length), cosformer(k, "key", length=length), v
    )
    out_leap = noncausal_linear_attention(leap(q, "query"), leap(k, "key"), v)
    assert (out_cosformer - out_leap).abs().max() < 1e-12


def test_leap_proportions_in_unit_interval_and_separate():
    feature_map = LeapFeatureMap(8, hidden_ratio=4).double()
    x = projections()
    p_q = feature_map.proportions(x, "query")
    p_k = feature_map.proportions(x, "key")
    assert p_q.shape == (2, 3, 37)
    assert ((p_q > 0) & (p_q < 1)).all()
    assert not torch.allclose(p_q, p_k)
    assert feature_map.query_proportion.hidden.out_features == 2
    phi = feature_map(x, "query")
    assert (phi - cosine_weighted_features(torch.relu(x), p_q)).abs().max() < 1e-12


def test_leap_proportions_ignore_positions():
    feature_map = LeapFeatureMap(8).double()
    x = projections()
    # Exact equality is too strict: a matmul over a slice may round 1 ulp differently.
    torch.testing.assert_close(
        feature_map(x[:, :, 5:], "key", offset=5), feature_map(x, "key")[:, :, 5:], rtol=0, atol=1e-12
    )


def test_leap_proportions_shared_across_heads():
    feature_map = LeapFeatureMap(8).double()
    x = projections(heads=1).expand(2, 4, 37, 8)
    p = feature_map.proportions(x, "query")
    torch.testing.assert_close(p[:, 0], p[:, 3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("ratio", [3, 5, 16])
def test_leap_ratio_must_divide_head_dim(ratio):
    with pytest.raises(ValueError, match=rf"r={ratio}.*d_h=8"):
        LeapFeatureMap(8, hidden_ratio=ratio)


def test_unknown_feature_map():
    with pytest.raises(ValueError, match="unknown feature map"):
        build_feature_map("performer", 8)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind must be"):
        ReluFeatureMap(8)(projections(), "value")
