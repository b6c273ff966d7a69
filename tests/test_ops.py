"""The fast linear-attention forms against their naive quadratic and step-by-step references."""

import pytest
import torch

import leap_fairseq  # noqa: F401  (applies the compat patches)
from leap_fairseq.ops import linear_attention
from leap_fairseq.ops import (
    LinearAttentionState,
    accumulate_state,
    attend_state,
    causal_linear_attention,
    causal_linear_attention_reference,
    noncausal_linear_attention,
    noncausal_linear_attention_reference,
    prefix_linear_attention,
    prefix_linear_attention_reference,
    recurrent_linear_attention,
    recurrent_linear_attention_reference,
)

LENGTHS = [1, 37, 101, 130]
TOL64 = 1e-10
TOL32 = 1e-5


def features(batch, heads, length, dim, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, heads, length, dim, generator=generator, dtype=dtype)


def values(batch, heads, length, dim, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, dim, generator=generator, dtype=dtype)


def max_error(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("length", LENGTHS)
def test_causal_matches_reference(length):
    q, k, v = features(2, 3, length, 6), features(2, 3, length, 6, seed=2), values(2, 3, length, 5)
    reference = causal_linear_attention_reference(q, k, v)
    for chunk_size in (1, 7, 64, length):
        out = causal_linear_attention(q, k, v, chunk_size=chunk_size, method="chunked")
        assert max_error(out, reference) < TOL64, chunk_size
    assert max_error(causal_linear_attention(q, k, v, method="quadratic"), reference) < TOL64


@pytest.mark.parametrize("method", ["chunked", "quadratic"])
@pytest.mark.parametrize("length", LENGTHS)
def test_causal_float32_matches_reference(length, method):
    q, k, v = features(2, 2, length, 8), features(2, 2, length, 8, seed=2), values(2, 2, length, 4)
    reference = causal_linear_attention_reference(q, k, v)
    out = causal_linear_attention(q.float(), k.float(), v.float(), chunk_size=16, method=method)
    assert out.dtype == torch.float32
    assert max_error(out.double(), reference) < TOL32


def test_step_reference_matches_quadratic():
    q, k, v = features(1, 2, 37, 4), features(1, 2, 37, 4, seed=2), values(1, 2, 37, 3)
    reference = causal_linear_attention_reference(q, k, v)
    assert max_error(recurrent_linear_attention_reference(q, k, v), reference) < TOL64


@pytest.mark.parametrize("method", ["chunked", "quadratic"])
@pytest.mark.parametrize("length", [37, 101])
def test_causal_key_padding(length, method):
    q, k, v = features(2, 2, length, 4), features(2, 2, length, 4, seed=2), values(2, 2, length, 3)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, -9:] = True
    reference = causal_linear_attention_reference(q, k, v, key_padding_mask=mask)
    out = causal_linear_attention(q, k, v, chunk_size=16, key_padding_mask=mask, method=method)
    assert max_error(out, reference) < TOL64


@pytest.mark.parametrize("pieces", [[1] * 12, [3] * 4, [1, 3, 8], [12]])
def test_recurrent_pieces_match_causal(pieces):
    length = sum(pieces)
    q, k, v = features(2, 3, length, 5), features(2, 3, length, 5, seed=2), values(2, 3, length, 4)
    expected = causal_linear_attention(q, k, v)
    state = None
    outputs = []
    start = 0
    for size in pieces:
        piece = slice(start, start + size)
        out, state = recurrent_linear_attention(q[:, :, piece], k[:, :, piece], v[:, :, piece], state)
        outputs.append(out)
        start += size
    assert max_error(torch.cat(outputs, dim=2), expected) < TOL64
    assert isinstance(state, LinearAttentionState)
    assert state.kv.shape == (2, 3, 5, 4)
    assert state.k_sum.shape == (2, 3, 5)
    assert max_error(state.kv, torch.einsum("bhnf,bhnd->bhfd", k, v)) < TOL64
    assert max_error(state.k_sum, k.sum(dim=2)) < TOL64


def test_recurrent_long_sequence_in_pieces():
    q, k, v = features(1, 2, 130, 4), features(1, 2, 130, 4, seed=2), values(1, 2, 130, 3)
    expected = causal_linear_attention_reference(q, k, v)
    out_a, state = recurrent_linear_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1])
    out_b, state = recurrent_linear_attention(q[:, :, 1:4], k[:, :, 1:4], v[:, :, 1:4], state)
    out_c, state = recurrent_linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], state)
    assert max_error(torch.cat([out_a, out_b, out_c], dim=2), expected) < TOL64


@pytest.mark.parametrize("num_keys", [1, 37, 101])
def test_noncausal_matches_reference(num_keys):
    q, k, v = features(2, 2, 13, 6), features(2, 2, num_keys, 6, seed=2), values(2, 2, num_keys, 5)
    mask = torch.zeros(2, num_keys, dtype=torch.bool)
    mask[1, num_keys // 2 + 1 :] = True
    for key_padding_mask in (None, mask):
        reference = noncausal_linear_attention_reference(q, k, v, key_padding_mask)
        assert max_error(noncausal_linear_attention(q, k, v, key_padding_mask), reference) < TOL64


def test_state_helpers_match_noncausal():
    q, k, v = features(2, 2, 7, 4), features(2, 2, 37, 4, seed=2), values(2, 2, 37, 3)
    mask = torch.zeros(2, 37, dtype=torch.bool)
    mask[0, 30:] = True
    state = accumulate_state(k[:, :, :10], v[:, :, :10], None, mask[:, :10])
    state = accumulate_state(k[:, :, 10:], v[:, :, 10:], state, mask[:, 10:])
    expected = noncausal_linear_attention_reference(q, k, v, mask)
    assert max_error(attend_state(q, state), expected) < TOL64


def prefix_schedules(num_queries, num_keys):
    """Schedules that start at 0, jump, stay flat, reach all keys early and run past them."""
    wait_k = torch.clamp(torch.arange(num_queries) + 3, max=num_keys)
    early_full = torch.clamp(torch.arange(num_queries) * 5, max=num_keys)
    too_long = torch.arange(num_queries) * 7 + num_keys // 2
    flat_then_jump = torch.zeros(num_queries, dtype=torch.long)
    flat_then_jump[num_queries // 2 :] = num_keys + 20
    return {"wait_k": wait_k, "early_full": early_full, "too_long": too_long, "flat_then_jump": flat_then_jump}


@pytest.mark.parametrize("num_queries,num_keys", [(1, 1), (13, 37), (37, 101), (40, 130)])
def test_prefix_matches_masked_reference(num_queries, num_keys):
    q, k, v = features(2, 2, num_queries, 6), features(2, 2, num_keys, 6, seed=2), values(2, 2, num_keys, 5)
    for name, schedule in prefix_schedules(num_queries, num_keys).items():
        reference = prefix_linear_attention_reference(q, k, v, schedule)
        for chunk_size in (1, 7, 64):
            out = prefix_linear_attention(q, k, v, schedule, chunk_size=chunk_size, method="chunked")
            assert max_error(out, reference) < TOL64, (name, chunk_size)
        out = prefix_linear_attention(q, k, v, schedule, method="quadratic")
        assert max_error(out, reference) < TOL64, (name, "quadratic")


@pytest.mark.parametrize("method", ["chunked", "quadratic"])
def test_prefix_batched_schedule_and_padding(method):
    q, k, v = features(3, 2, 20, 4), features(3, 2, 37, 4, seed=2), values(3, 2, 37, 3)
    schedule = torch.stack(
        [
            torch.clamp(torch.arange(20) * 2 + 1, max=37),
            torch.full((20,), 37),
            torch.clamp(torch.arange(20) + 30, max=50),
        ]
    )
    mask = torch.zeros(3, 37, dtype=torch.bool)
    mask[0, 25:] = True
    mask[2, :4] = True
    reference = prefix_linear_attention_reference(q, k, v, schedule, mask)
    assert max_error(prefix_linear_attention(q, k, v, schedule, mask, method=method), reference) < TOL64


@pytest.mark.parametrize(
    "call, limit",
    [
        (lambda q, k, v, method: causal_linear_attention(q, k, v, method=method), "QUADRATIC_MAX_PAIRS_CAUSAL"),
        (
            lambda q, k, v, method: prefix_linear_attention(q, k, v, torch.arange(q.shape[2]) + 1, method=method),
            "QUADRATIC_MAX_PAIRS_PREFIX",
        ),
    ],
    ids=["causal", "prefix"],
)
def test_auto_takes_quadratic_form_up_to_its_limit(monkeypatch, call, limit):
    used = []
    chunked = linear_attention._causal_chunked

    def spy(*args, **kwargs):
        used.append(args[0].shape[2])
        return chunked(*args, **kwargs)

    monkeypatch.setattr(linear_attention, "_causal_chunked", spy)
    monkeypatch.setattr(linear_attention, limit, 10 * 10)
    for length, expect_chunked in [(10, False), (11, True)]:
        used.clear()
        q, k, v = features(1, 2, length, 4), features(1, 2, length, 4, seed=2), values(1, 2, length, 3)
        auto = call(q, k, v, "auto")
        assert bool(used) == expect_chunked, length
        assert max_error(auto, call(q, k, v, "quadratic")) < TOL64, length


def test_unknown_method_is_rejected():
    q, k, v = features(1, 1, 3, 3), features(1, 1, 3, 3, seed=2), values(1, 1, 3, 2)
    with pytest.raises(ValueError, match="method must be one of auto, chunked, quadratic, got 'fast'"):
        causal_linear_attention(q, k, v, method="fast")


def test_prefix_zero_length_gives_zero():
    q, k, v = features(1, 1, 4, 3), features(1, 1, 5, 3, seed=2), values(1, 1, 5, 2)
    out = prefix_linear_attention(q, k, v, torch.tensor([0, 0, 2, 5]))
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))


def test_prefix_rejects_decreasing_schedule():
    q, k, v = features(1, 1, 3, 3), features(1, 1, 5, 3, seed=2), values(1, 1, 5, 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        prefix_linear_attention(q, k, v, torch.tensor([2, 1, 3]))


def test_prefix_rejects_wrong_shape():
    q, k, v = features(1, 1, 3, 3), features(1, 1, 5, 3, seed=2), values(1, 1, 5, 2)
    with pytest.raises(ValueError, match="prefix_lengths must have shape"):
        prefix_linear_attention(q, k, v, torch.tensor([1, 2]))


def test_all_zero_features_give_zero():
    zeros = torch.zeros(1, 2, 37, 4)
    v = values(1, 2, 37, 3, dtype=torch.float32)
    outputs = [
        causal_linear_attention(zeros, zeros, v, chunk_size=8),
        noncausal_linear_attention(zeros, zeros, v),
        recurrent_linear_attention(zeros, zeros, v)[0],
        prefix_linear_attention(zeros, zeros, v, torch.arange(37)),
    ]
    for out in outputs:
        assert torch.isfinite(out).all()
        assert torch.equal(out, torch.zeros_like(out))


def long_inputs(dtype):
    generator = torch.Generator().manual_seed(3)
    length = 20_000
    # Features up to 4 make the sums reach ~1e5, beyond float16's range of 65504.
    q = (4 * torch.rand(1, 2, length, 16, generator=generator)).to(dtype)
    k = (4 * torch.rand(1, 2, length, 16, generator=generator)).to(dtype)
    v = (10 * torch.randn(1, 2, length, 8, generator=generator)).to(dtype)
    return q, k, v


def cpu_autocast_supports(dtype):
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_long_input_is_finite(dtype):
    q, k, v = long_inputs(dtype)
    schedule = torch.clamp(torch.arange(20_000) + 5, max=20_000)
    context = torch.autocast("cpu", dtype=dtype) if cpu_autocast_supports(dtype) else torch.autocast("cpu", enabled=False)
    with context:
        outputs = {
            "causal": causal_linear_attention(q, k, v),
            "noncausal": noncausal_linear_attention(q, k, v),
            "recurrent": recurrent_linear_attention(q, k, v)[0],
            "prefix": prefix_linear_attention(q, k, v, schedule),
        }
    for name, out in outputs.items():
        assert out.dtype == dtype, name
        assert torch.isfinite(out).all(), name
    _, state = recurrent_linear_attention(q, k, v)
    assert state.kv.dtype == torch.float32


def test_float64_inputs_keep_float64_state():
    q, k, v = features(1, 1, 5, 3), features(1, 1, 5, 3, seed=2), values(1, 1, 5, 2)
    _, state = recurrent_linear_attention(q, k, v)
    assert state.kv.dtype == torch.float64


def gradcheck_inputs(num_queries=9, num_keys=11):
    q = features(1, 2, num_queries, 3).requires_grad_()
    k = features(1, 2, num_keys, 3, seed=2).requires_grad_()
    v = values(1, 2, num_keys, 2).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("method", ["chunked", "quadratic"])
def test_gradcheck_causal(method):
    q, k, v = gradcheck_inputs(11, 11)
    assert torch.autograd.gradcheck(
        lambda q, k, v: causal_linear_attention(q, k, v, chunk_size=4, method=method), (q, k, v)
    )


def test_gradcheck_recurrent_with_state():
    q, k, v = gradcheck_inputs(11, 11)

    def two_pieces(q, k, v):
        first, state = recurrent_linear_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4])
        second, _ = recurrent_linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], state)
        return torch.cat([first, second], dim=2)

    assert torch.autograd.gradcheck(two_pieces, (q, k, v))


def test_gradcheck_noncausal():
    q, k, v = gradcheck_inputs()
    mask = torch.zeros(1, 11, dtype=torch.bool)
    mask[0, 8:] = True
    assert torch.autograd.gradcheck(lambda q, k, v: noncausal_linear_attention(q, k, v, mask), (q, k, v))


@pytest.mark.parametrize("method", ["chunked", "quadratic"])
def test_gradcheck_prefix(method):
    q, k, v = gradcheck_inputs()
    schedule = torch.tensor([0, 1, 3, 3, 6, 9, 11, 11, 14])
    assert torch.autograd.gradcheck(
        lambda q, k, v: prefix_linear_attention(q, k, v, schedule, chunk_size=4, method=method), (q, k, v)
    )
