"""Streaming API of leap_s2t_waitk against the offline forward pass.

The streamed encoder (causal and chunk masks, every attention type) must
reproduce the offline encoder for any split of the input, and the streamed
decoder, fed per the wait-k schedule, must reproduce the offline wait-k
log-probabilities at every target position.
"""

import pytest
import torch

import leap_fairseq  # noqa: F401  (applies the compat patches, registers the model)
from leap_fairseq.models.waitk_schedule import waitk_should_write
from s2t_helpers import build_model

ATTENTION_TYPES = ["leap", "relu", "cosformer", "softmax"]
STREAMING_MASKS = ["causal", "chunk"]
TOLERANCE = 1e-4


def stream_encoder_in_pieces(model, features, piece):
    """Feed (B, T, 80) features in pieces of ``piece`` frames; return the concatenated new states."""
    state = model.init_stream_state(batch_size=features.size(0))
    outputs = []
    total = features.size(1)
    for start in range(0, total, piece):
        finished = start + piece >= total
        out, state = model.stream_encoder(features[:, start : start + piece], state, finished=finished)
        outputs.append(out)
    return torch.cat(outputs, dim=0), state


@pytest.mark.parametrize("mask", STREAMING_MASKS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_streamed_encoder_equals_offline(mask, attention_type):
    model, _ = build_model(attention_type, mask, ratio=4)
    torch.manual_seed(1)
    num_frames = 97  # 25 encoder states: 6 full blocks of 4 and one partial block
    features = torch.randn(1, num_frames, 80)
    with torch.no_grad():
        offline = model.encoder(features, torch.tensor([num_frames]))["encoder_out"][0]
        for piece in (1, 7, 40):
            streamed, state = stream_encoder_in_pieces(model, features, piece)
            assert streamed.shape == offline.shape, f"piece {piece}"
            assert torch.allclose(streamed, offline, atol=TOLERANCE), f"piece {piece}: max error {(streamed - offline).abs().max()}"
            assert state.encoder.num_states_out == offline.size(0)


def test_streamed_encoder_batch_equals_offline():
    model, _ = build_model("leap", "chunk", ratio=3)
    torch.manual_seed(2)
    features = torch.randn(3, 50, 80)
    with torch.no_grad():
        offline = model.encoder(features, torch.tensor([50, 50, 50]))["encoder_out"][0]
        streamed, _ = stream_encoder_in_pieces(model, features, 9)
    assert torch.allclose(streamed, offline, atol=TOLERANCE)


def test_chunk_encoder_emits_whole_blocks():
    model, _ = build_model("leap", "chunk", ratio=3)
    state = model.init_stream_state()
    sizes = []
    with torch.no_grad():
        for _ in range(10):
            out, state = model.stream_encoder(torch.randn(4, 80), state)  # 4 frames = 1 encoder state
            sizes.append(out.size(0))
        out, state = model.stream_encoder(torch.randn(0, 80), state, finished=True)
    assert sizes == [0, 0, 3, 0, 0, 3, 0, 0, 3, 0]
    assert out.size(0) == 1, "the partial last block is flushed when the source ends"
    assert state.encoder.num_states_out == 10


def test_causal_encoder_emits_every_complete_state():
    model, _ = build_model("leap", "causal")
    state = model.init_stream_state()
    with torch.no_grad():
        out, state = model.stream_encoder(torch.randn(1, 80), state)
        assert out.size(0) == 1, "one frame completes the first state (left-only padding)"
        out, state = model.stream_encoder(torch.randn(3, 80), state)
        assert out.size(0) == 0
        out, state = model.stream_encoder(torch.randn(1, 80), state)
        assert out.size(0) == 1


def run_streaming_decoder(model, features, prev_tokens, piece):
    """Stream features in pieces and write one token per step whenever the schedule allows.

    Returns (T_tgt, V) log-probabilities and the number of encoder states read
    before each write.
    """
    state = model.init_stream_state()
    num_target = prev_tokens.size(0)
    log_probs = []
    read_before_write = []
    total = features.size(0)
    start = 0
    while len(log_probs) < num_target:
        if model.should_write(state):
            state = model.feed_visible_source(state)
            read_before_write.append(state.encoder.num_states_out)
            step_log_probs, state = model.decoder_step(prev_tokens[len(log_probs)], state)
            log_probs.append(step_log_probs[0])
            continue
        finished = start + piece >= total
        _, state = model.stream_encoder(features[start : start + piece], state, finished=finished)
        start += piece
    return torch.stack(log_probs), read_before_write


@pytest.mark.parametrize("mask", STREAMING_MASKS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_streamed_decoder_equals_offline_waitk(mask, attention_type):
    k, ratio = 2, 3
    model, dictionary = build_model(attention_type, mask, k=k, ratio=ratio)
    torch.manual_seed(3)
    num_frames = 57  # 15 encoder states = 5 chunks of 3
    features = torch.randn(num_frames, 80)
    # 9 target positions: positions 3.. would need more than 5 chunks, so the tail sees the whole source.
    prev_tokens = torch.tensor([dictionary.eos()] + torch.randint(4, len(dictionary), (8,)).tolist())
    with torch.no_grad():
        logits, _ = model(features.unsqueeze(0), torch.tensor([num_frames]), prev_tokens.unsqueeze(0))
        offline = torch.log_softmax(logits[0].float(), dim=-1)
        for piece in (1, 7, 40):
            streamed, read = run_streaming_decoder(model, features, prev_tokens, piece)
            assert streamed.shape == offline.shape
            error = (streamed - offline).abs().max(dim=-1).values
            assert bool((error < TOLERANCE).all()), f"piece {piece}: per-position error {error.tolist()}"
            for i, num_read in enumerate(read):
                assert num_read >= min((k + i) * ratio, 15), f"piece {piece}: token {i} written after {num_read} states"


def test_streamed_decoder_detects_other_lagging():
    """The equality check above is sensitive: a stream run with k=3 differs from the offline k=2 forward."""
    model, dictionary = build_model("leap", "chunk", k=2, ratio=3)
    torch.manual_seed(3)
    features = torch.randn(57, 80)
    prev_tokens = torch.tensor([dictionary.eos(), 5, 6, 7])
    with torch.no_grad():
        logits, _ = model(features.unsqueeze(0), torch.tensor([57]), prev_tokens.unsqueeze(0))
        offline = torch.log_softmax(logits[0], dim=-1)
        model.decoder.waitk_lagging = 3
        streamed, _ = run_streaming_decoder(model, features, prev_tokens, 7)
    assert not torch.allclose(streamed[0], offline[0], atol=TOLERANCE)


def test_full_mask_reencodes_prefix():
    model, dictionary = build_model("softmax", "full", k=2, ratio=3)
    assert not model.encoder_streams_incrementally
    causal_model, _ = build_model("leap", "causal")
    assert causal_model.encoder_streams_incrementally
    torch.manual_seed(4)
    features = torch.randn(57, 80)
    prev_tokens = torch.tensor([dictionary.eos(), 5, 6, 7, 8, 9, 10, 11, 12])
    with torch.no_grad():
        streamed, _ = run_streaming_decoder(model, features, prev_tokens, 7)
        state = model.init_stream_state()
        out, state = model.stream_encoder(features[:20], state)
        prefix = model.encoder(features[:20].unsqueeze(0), torch.tensor([20]))["encoder_out"][0]
    assert torch.allclose(out, prefix), "the re-encoding path returns the offline encoding of the prefix"
    assert streamed.shape == (9, len(dictionary))
    assert torch.isfinite(streamed).all()


def test_streamed_decoder_batch_of_two():
    model, dictionary = build_model("leap", "chunk", k=1, ratio=3)
    torch.manual_seed(5)
    features = torch.randn(2, 30, 80)
    prev_tokens = torch.tensor([[dictionary.eos(), 5, 6, 7], [dictionary.eos(), 8, 9, 10]])
    with torch.no_grad():
        logits, _ = model(features, torch.tensor([30, 30]), prev_tokens)
        offline = torch.log_softmax(logits, dim=-1)
        state = model.init_stream_state(batch_size=2)
        _, state = model.stream_encoder(features, state, finished=True)
        for i in range(prev_tokens.size(1)):
            assert model.should_write(state)
            state = model.feed_visible_source(state)
            log_probs, state = model.decoder_step(prev_tokens[:, i], state)
            assert torch.allclose(log_probs, offline[:, i], atol=TOLERANCE), f"position {i}"


def test_should_write_follows_schedule():
    model, _ = build_model("leap", "chunk", k=3, ratio=2)
    state = model.init_stream_state()
    assert not model.should_write(state)
    with torch.no_grad():
        _, state = model.stream_encoder(torch.randn(20, 80), state)  # 5 states -> 4 emitted (2 blocks)
    assert state.encoder.num_states_out == 4
    assert not model.should_write(state), "k=3 chunks of 2 states need 6 states"
    assert waitk_should_write(6, False, 0, 3, 2)
    with torch.no_grad():
        _, state = model.stream_encoder(torch.randn(0, 80), state, finished=True)
    assert model.should_write(state), "a source shorter than k chunks is read to the end, then written"


def test_decoder_step_before_reading_raises():
    model, dictionary = build_model("leap", "chunk")
    state = model.init_stream_state()
    with pytest.raises(RuntimeError, match="read source first"):
        model.decoder_step(dictionary.eos(), state)


def test_stream_after_finish_raises():
    model, _ = build_model("leap", "causal")
    state = model.init_stream_state()
    with torch.no_grad():
        _, state = model.stream_encoder(torch.randn(8, 80), state, finished=True)
        with pytest.raises(RuntimeError, match="finished"):
            model.stream_encoder(torch.randn(8, 80), state)


def test_stream_wrong_feature_size_raises():
    model, _ = build_model("leap", "causal")
    state = model.init_stream_state()
    with pytest.raises(ValueError, match="80"):
        model.stream_encoder(torch.randn(8, 40), state)
