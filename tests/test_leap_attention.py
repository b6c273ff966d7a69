"""LeapMultiheadAttention: fairseq compatibility, padding, incremental decoding, streaming."""

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention

import leap_fairseq  # noqa: F401  (applies the compat patches)
from leap_fairseq.modules import AttentionStreamState, LeapMultiheadAttention

TYPES = ["softmax", "relu", "cosformer", "leap"]
LINEAR = ["relu", "cosformer", "leap"]
EMBED, HEADS = 16, 2
TOL = 1e-10
# fairseq's incremental softmax path normalises in float32 even for float64 inputs.
SOFTMAX_INCREMENTAL_TOL = 1e-6


def make(attention_type, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("cosformer_horizon", 64)
    module = LeapMultiheadAttention(EMBED, HEADS, attention_type=attention_type, **kwargs)
    return module.double().eval()


def randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def max_error(a, b):
    return (a - b).abs().max().item()


def tolerance(attention_type, incremental=False):
    return SOFTMAX_INCREMENTAL_TOL if attention_type == "softmax" and incremental else TOL


def self_attention(module, x, **kwargs):
    return module(x, x, x, need_weights=False, **kwargs)[0]


# ---------------------------------------------------------------------------
# fairseq compatibility
# ---------------------------------------------------------------------------


def test_softmax_has_fairseq_parameters_and_output():
    torch.manual_seed(0)
    reference = MultiheadAttention(EMBED, HEADS, self_attention=True).double().eval()
    module = make("softmax", self_attention=True)
    assert set(module.state_dict()) == set(reference.state_dict())
    module.load_state_dict(reference.state_dict())
    x = randn(9, 3, EMBED)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1, 6:] = True
    expected, expected_weights = reference(x, x, x, key_padding_mask=mask)
    out, weights = module(x, x, x, key_padding_mask=mask)
    assert max_error(out, expected) < TOL
    assert max_error(weights, expected_weights) < TOL


def test_linear_types_keep_fairseq_projection_names():
    names = set(make("leap", self_attention=True).state_dict())
    for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"{projection}.weight" in names
        assert f"{projection}.bias" in names
    assert "feature_map.query_proportion.hidden.weight" in names
    assert "feature_map.key_proportion.output.weight" in names
    assert set(make("relu", self_attention=True).state_dict()) == set(make("softmax", self_attention=True).state_dict())


def test_unknown_attention_type():
    with pytest.raises(ValueError, match="attention_type"):
        LeapMultiheadAttention(EMBED, HEADS, attention_type="linformer")


def test_leap_ratio_not_dividing_head_dim():
    with pytest.raises(ValueError, match=r"r=5.*d_h=12"):
        LeapMultiheadAttention(24, 2, self_attention=True, attention_type="leap", leap_hidden_ratio=5)


# ---------------------------------------------------------------------------
# offline forms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention_type", TYPES)
def test_causal_equals_prefix_of_own_positions(attention_type):
    module = make(attention_type, self_attention=True, causal=True, chunk_size=4)
    x = randn(13, 2, EMBED)
    causal = self_attention(module, x)
    prefix = self_attention(module, x, prefix_lengths=torch.arange(1, 14).expand(2, 13))
    assert max_error(causal, prefix) < TOL


@pytest.mark.parametrize("attention_type", LINEAR)
@pytest.mark.parametrize("mode", ["noncausal", "causal", "prefix"])
def test_weights_reproduce_output(attention_type, mode):
    causal = mode == "causal"
    module = make(attention_type, self_attention=True, causal=causal)
    x = randn(11, 2, EMBED)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[1, 8:] = True
    prefix = torch.tensor([2, 2, 3, 5, 5, 8, 11, 11, 11, 20, 20]) if mode == "prefix" else None
    out, weights = module(x, x, x, key_padding_mask=mask, need_head_weights=True, prefix_lengths=prefix)
    assert weights.shape == (HEADS, 2, 11, 11)
    v = module._split_heads(module.v_proj(x))
    rebuilt = module._merge_heads(torch.matmul(weights.transpose(0, 1), v))
    assert max_error(out[:, 0], rebuilt[:, 0]) < TOL
    assert max_error(out[:8, 1], rebuilt[:8, 1]) < TOL
    assert torch.all(weights[:, 1, :, 8:] == 0)
    if causal:
        assert torch.all(weights[:, 0].triu(1) == 0)
    averaged = module(x, x, x, key_padding_mask=mask, need_weights=True, prefix_lengths=prefix)[1]
    assert max_error(averaged, weights.mean(dim=0)) < TOL


def test_need_weights_false_returns_none():
    module = make("leap", self_attention=True, causal=True)
    x = randn(5, 1, EMBED)
    assert module(x, x, x, need_weights=False)[1] is None


def pad_batch(sequences, left):
    """Stack (T_b, C) sequences into (T, B, C) with padding on the left or right, plus the mask."""
    length = max(s.shape[0] for s in sequences)
    batch = torch.zeros(length, len(sequences), EMBED, dtype=torch.float64)
    mask = torch.ones(len(sequences), length, dtype=torch.bool)
    for b, sequence in enumerate(sequences):
        span = slice(length - sequence.shape[0], length) if left else slice(0, sequence.shape[0])
        batch[span, b] = sequence
        mask[b, span] = False
    return batch, mask


@pytest.mark.parametrize("attention_type", TYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("left", [False, True])
def test_padded_self_attention_equals_alone(attention_type, causal, left):
    module = make(attention_type, self_attention=True, causal=causal, chunk_size=4)
    sequences = [randn(n, EMBED, seed=n) for n in (13, 7, 1)]
    batch, mask = pad_batch(sequences, left)
    out = self_attention(module, batch, key_padding_mask=mask)
    for b, sequence in enumerate(sequences):
        alone = self_attention(module, sequence[:, None])
        valid = ~mask[b]
        assert max_error(out[valid, b], alone[:, 0]) < TOL, b


@pytest.mark.parametrize("attention_type", TYPES)
@pytest.mark.parametrize("left", [False, True])
def test_padded_cross_attention_equals_alone(attention_type, left):
    module = make(attention_type, encoder_decoder_attention=True)
    sources = [randn(n, EMBED, seed=n) for n in (37, 12, 1)]
    source, mask = pad_batch(sources, left)
    query = randn(6, 3, EMBED, seed=99)
    out = module(query, source, source, key_padding_mask=mask, need_weights=False)[0]
    for b, alone_source in enumerate(sources):
        alone = module(query[:, b : b + 1], alone_source[:, None], alone_source[:, None], need_weights=False)[0]
        assert max_error(out[:, b], alone[:, 0]) < TOL, b


@pytest.mark.parametrize("attention_type", TYPES)
def test_padded_prefix_cross_attention_equals_alone(attention_type):
    module = make(attention_type, encoder_decoder_attention=True)
    sources = [randn(n, EMBED, seed=n) for n in (37, 12)]
    source, mask = pad_batch(sources, left=False)
    query = randn(9, 2, EMBED, seed=99)
    schedule = torch.clamp(torch.arange(9) * 4 + 3, max=40)
    out = module(query, source, source, key_padding_mask=mask, prefix_lengths=schedule, need_weights=False)[0]
    for b, alone_source in enumerate(sources):
        alone = module(
            query[:, b : b + 1], alone_source[:, None], alone_source[:, None],
            prefix_lengths=schedule, need_weights=False,
        )[0]
        assert max_error(out[:, b], alone[:, 0]) < TOL, b


# ---------------------------------------------------------------------------
# attn_mask handling for linear types
# ---------------------------------------------------------------------------


def future_mask(length):
    return torch.triu(torch.full((length, length), float("-inf"), dtype=torch.float64), 1)


@pytest.mark.parametrize("attention_type", TYPES)
def test_future_mask_accepted_when_causal(attention_type):
    module = make(attention_type, self_attention=True, causal=True)
    x = randn(9, 2, EMBED)
    with_mask = self_attention(module, x, attn_mask=future_mask(9))
    assert max_error(with_mask, self_attention(module, x)) < TOL


@pytest.mark.parametrize("attention_type", LINEAR)
def test_other_attn_mask_rejected(attention_type):
    causal_module = make(attention_type, self_attention=True, causal=True)
    x = randn(9, 2, EMBED)
    band = future_mask(9)
    band[8, 0] = float("-inf")
    with pytest.raises(ValueError, match="not fairseq's future mask"):
        self_attention(causal_module, x, attn_mask=band)
    noncausal_module = make(attention_type, self_attention=True, causal=False)
    with pytest.raises(ValueError, match="attn_mask is not supported"):
        self_attention(noncausal_module, x, attn_mask=future_mask(9))


# ---------------------------------------------------------------------------
# fairseq-style incremental decoding with a beam reorder
# ---------------------------------------------------------------------------


def decode_self(module, tokens, state, start, stop):
    outputs = []
    for t in range(start, stop):
        step = tokens[t : t + 1]
        outputs.append(module(step, step, step, incremental_state=state, need_weights=False)[0])
    return torch.cat(outputs)


@pytest.mark.parametrize("attention_type", TYPES)
def test_incremental_self_attention_with_reorder(attention_type):
    module = make(attention_type, self_attention=True, causal=True)
    first = randn(12, 3, EMBED)
    state = {}
    before = decode_self(module, first, state, 0, 5)
    assert max_error(before, self_attention(module, first)[:5]) < tolerance(attention_type, True)

    order = torch.tensor([2, 0, 0])
    module.reorder_incremental_state(state, order)
    continued = torch.cat([first[:5, order], randn(7, 3, EMBED, seed=5)])
    after = decode_self(module, continued, state, 5, 12)
    expected = self_attention(module, continued)[5:]
    assert max_error(after, expected) < tolerance(attention_type, True)


@pytest.mark.parametrize("attention_type", LINEAR)
def test_incremental_self_state_has_no_growing_cache(attention_type):
    module = make(attention_type, self_attention=True, causal=True)
    x = randn(6, 2, EMBED)
    state = {}
    decode_self(module, x, state, 0, 6)
    buffer = module._get_input_buffer(state)
    assert set(buffer) == {"kv", "k_sum", "positions"}
    feature_dim = module.feature_map.feature_dim
    assert buffer["kv"].shape == (2, HEADS, feature_dim, EMBED // HEADS)
    assert buffer["positions"].tolist() == [6, 6]


@pytest.mark.parametrize("attention_type", LINEAR)
def test_incremental_several_tokens_at_once(attention_type):
    module = make(attention_type, self_attention=True, causal=True)
    x = randn(10, 2, EMBED)
    state = {}
    pieces = [x[:1], x[1:4], x[4:]]
    outputs = [module(p, p, p, incremental_state=state, need_weights=False)[0] for p in pieces]
    assert max_error(torch.cat(outputs), self_attention(module, x)) < TOL


@pytest.mark.parametrize("attention_type", TYPES)
def test_incremental_cross_attention_with_reorder(attention_type):
    module = make(attention_type, encoder_decoder_attention=True)
    source, mask = pad_batch([randn(n, EMBED, seed=n) for n in (9, 14, 5)], left=True)
    query = randn(8, 3, EMBED, seed=7)
    state = {}
    outputs = []
    for t in range(8):
        if t == 4:
            # A shrinking batch, as when sentences finish; fairseq skips same-size reorders of
            # encoder-decoder caches because beams of one sentence share the source.
            order = torch.tensor([2, 0])
            module.reorder_incremental_state(state, order)
            source, mask, query = source[:, order], mask[order], query[:, order]
            outputs = [o[:, order] for o in outputs]
        step = query[t : t + 1]
        out, weights = module(
            step, source, source, key_padding_mask=mask, incremental_state=state, static_kv=True, need_weights=False
        )
        outputs.append(out)
    expected = module(query, source, source, key_padding_mask=mask, need_weights=False)[0]
    assert max_error(torch.cat(outputs), expected) < tolerance(attention_type, True)


# ---------------------------------------------------------------------------
# explicit streaming API against the offline forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention_type", TYPES)
def test_stream_self_equals_causal(attention_type):
    module = make(attention_type, self_attention=True, causal=True, chunk_size=4)
    x = randn(37, 2, EMBED)
    state = module.init_state(2, x.device, x.dtype)
    outputs = []
    for start, stop in [(0, 1), (1, 4), (4, 20), (20, 37)]:
        out, state = module.stream_self(x[start:stop], state)
        outputs.append(out)
    assert max_error(torch.cat(outputs), self_attention(module, x)) < TOL
    assert isinstance(state, AttentionStreamState)
    assert state.positions.tolist() == [37, 37]


@pytest.mark.parametrize("attention_type", TYPES)
def test_stream_self_block_equals_prefix(attention_type):
    module = make(attention_type, self_attention=True, causal=True)
    x = randn(23, 2, EMBED)
    blocks = [(0, 5), (5, 6), (6, 16), (16, 23)]
    block_ends = torch.tensor([stop for start, stop in blocks for _ in range(start, stop)])
    expected = self_attention(module, x, prefix_lengths=block_ends)
    state = module.init_state(2, x.device, x.dtype)
    outputs = []
    for start, stop in blocks:
        out, state = module.stream_self(x[start:stop], state, block=True)
        outputs.append(out)
    assert max_error(torch.cat(outputs), expected) < TOL


@pytest.mark.parametrize("attention_type", TYPES)
def test_stream_cross_equals_prefix(attention_type):
    module = make(attention_type, encoder_decoder_attention=True)
    source = randn(30, 2, EMBED)
    query = randn(12, 2, EMBED, seed=3)
    # Wait-3 with two source states per target token, reaching the whole source at token 9.
    schedule = torch.clamp(torch.arange(12) * 3 + 3, max=40)
    expected = module(query, source, source, prefix_lengths=schedule, need_weights=False)[0]
    state = module.init_state(2, source.device, source.dtype)
    read = 0
    outputs = []
    for i in range(12):
        target = min(int(schedule[i]), 30)
        if target > read:
            state = module.extend_source(source[read:target], state)
            read = target
        outputs.append(module.attend_source(query[i : i + 1], state, query_offset=i))
    assert max_error(torch.cat(outputs), expected) < TOL


@pytest.mark.parametrize("attention_type", TYPES)
def test_stream_cross_source_padding(attention_type):
    module = make(attention_type, encoder_decoder_attention=True)
    source, mask = pad_batch([randn(n, EMBED, seed=n) for n in (10, 6)], left=False)
    query = randn(3, 2, EMBED, seed=3)
    expected = module(query, source, source, key_padding_mask=mask, prefix_lengths=torch.full((3,), 10))[0]
    state = module.init_state(2, source.device, source.dtype)
    state = module.extend_source(source[:4], state, mask[:, :4])
    state = module.extend_source(source[4:], state, mask[:, 4:])
    assert state.positions.tolist() == [10, 6]
    out = module.attend_source(query, state)
    assert max_error(out, expected) < TOL


def test_stream_state_index_select():
    module = make("leap", self_attention=True, causal=True)
    x = randn(6, 3, EMBED)
    state = module.init_state(3, x.device, x.dtype)
    _, state = module.stream_self(x, state)
    picked = state.index_select(torch.tensor([2, 0]))
    assert picked.linear.kv.shape[0] == 2
    assert torch.equal(picked.linear.kv[0], state.linear.kv[2])


def test_streaming_rejects_wrong_module_kind():
    module = make("leap", encoder_decoder_attention=True)
    state = module.init_state(1, None, torch.float64)
    with pytest.raises(ValueError, match="self-attention"):
        module.stream_self(randn(2, 1, EMBED), state)


def test_bf16_autocast_module_is_finite():
    module = LeapMultiheadAttention(EMBED, HEADS, self_attention=True, attention_type="leap", causal=True)
    x = torch.randn(2000, 1, EMBED)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x, x, x, need_weights=False)[0]
    assert torch.isfinite(out).all()


def test_cosformer_beyond_horizon_stays_bounded(caplog):
    torch.manual_seed(0)
    module = LeapMultiheadAttention(
        32, 4, self_attention=True, attention_type="cosformer", causal=True, cosformer_horizon=64
    ).eval()
    x = torch.randn(300, 1, 32)
    with caplog.at_level("WARNING"), torch.no_grad():
        out, _ = module(x, x, x)
    assert torch.isfinite(out).all()
    # Attention outputs are convex combinations of value vectors, so they stay
    # within the values' range; before the clamp they reached about 100x that.
    values = module.v_proj(x)
    assert out.abs().max() <= module.out_proj.weight.abs().sum(dim=1).max() * values.abs().max() + 1e-4
    assert "beyond the horizon M=64" in caplog.text
