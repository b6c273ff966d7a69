"""leap_s2t_waitk offline: the wait-k schedule, padding, odd inputs and fairseq's generator."""

from argparse import Namespace

import pytest
import torch

import leap_fairseq  # noqa: F401  (applies the compat patches, registers the model)
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from fairseq.sequence_generator import SequenceGenerator

from leap_fairseq.models.leap_s2t_waitk import LeapS2TWaitkModel
from s2t_helpers import build_model
from leap_fairseq.models.waitk_schedule import (
    chunk_prefix_lengths,
    waitk_prefix_lengths,
    waitk_should_write,
    waitk_source_budget,
)
from leap_fairseq.modules.subsampler import Conv1dSubsampler

TOLERANCE = 1e-4


# ---------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------


def reference_visible_states(num_target, encoder_length, k, ratio):
    """Simulate a READ/WRITE agent that reads one chunk at a time; return the states each token saw."""
    read = 0
    visible = []
    for _ in range(num_target):
        token = len(visible)
        while read < encoder_length and read < (k + token) * ratio:
            read = min(read + ratio, encoder_length)
        visible.append(read)
    return visible


@pytest.mark.parametrize(
    "num_target, encoder_lengths, k, ratio",
    [
        (6, [30], 3, 9),  # fewer chunks (4) than k + targets
        (4, [5], 3, 9),  # fewer source chunks than k
        (12, [27, 10, 1], 1, 3),  # uneven batch, a one-state source, long target tail
        (7, [23], 2, 4),  # length not divisible by the ratio
        (3, [100], 5, 1),
    ],
)
def test_prefix_lengths_match_agent_reference(num_target, encoder_lengths, k, ratio):
    lengths = torch.tensor(encoder_lengths)
    prefix = waitk_prefix_lengths(num_target, lengths, k, ratio)
    assert prefix.shape == (len(encoder_lengths), num_target)
    for b, length in enumerate(encoder_lengths):
        expected = reference_visible_states(num_target, length, k, ratio)
        assert prefix[b].tolist() == expected, f"utterance {b}"
        for i in range(num_target):
            assert waitk_source_budget(i, length, k, ratio) == expected[i]


def test_prefix_lengths_as_mask_match_plain_mask():
    lengths = torch.tensor([13, 8])
    k, ratio, num_target = 2, 3, 6
    prefix = waitk_prefix_lengths(num_target, lengths, k, ratio)
    mask = torch.arange(13)[None, None, :] < prefix[:, :, None]
    for b, length in enumerate(lengths.tolist()):
        for i in range(num_target):
            for j in range(13):
                visible = j < length and (j < (k + i) * ratio or (k + i) * ratio >= length)
                assert bool(mask[b, i, j]) == visible, (b, i, j)


def test_incremental_prefix_lengths_match_full():
    lengths = torch.tensor([17, 4])
    full = waitk_prefix_lengths(9, lengths, 2, 3)
    for step in range(9):
        single = waitk_prefix_lengths(1, lengths, 2, 3, first_target_index=step)
        assert torch.equal(single[:, 0], full[:, step])


def test_no_lagging_sees_whole_source():
    prefix = waitk_prefix_lengths(4, torch.tensor([7, 3]), None, 3)
    assert prefix.tolist() == [[7] * 4, [3] * 4]


def test_should_write_rule():
    assert not waitk_should_write(5, False, 0, 2, 3)
    assert waitk_should_write(6, False, 0, 2, 3)
    assert not waitk_should_write(8, False, 1, 2, 3)
    assert waitk_should_write(9, False, 1, 2, 3)
    assert waitk_should_write(1, True, 10, 2, 3), "after the source ends every token may be written"


@pytest.mark.parametrize("k, ratio", [(0, 3), (2, 0), (-1, 1)])
def test_invalid_schedule_arguments_raise(k, ratio):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        waitk_prefix_lengths(3, torch.tensor([5]), k, ratio)


def test_chunk_prefix_lengths():
    prefix = chunk_prefix_lengths(7, torch.tensor([7, 5]), 3)
    assert prefix.tolist() == [[3, 3, 3, 6, 6, 6, 7], [3, 3, 3, 5, 5, 5, 5]]


# ---------------------------------------------------------------------------
# subsampler
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_subsampler_lengths_never_zero(causal):
    subsampler = Conv1dSubsampler(80, 16, 8, (5, 5), causal=causal)
    for frames, expected in [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3), (100, 25)]:
        out, lengths = subsampler(torch.randn(1, frames, 80), torch.tensor([frames]))
        assert out.shape[0] == expected, f"{frames} frames"
        assert lengths.tolist() == [expected], f"{frames} frames"


def test_subsampler_stream_matches_offline_float64():
    subsampler = Conv1dSubsampler(80, 16, 8, (5, 3), causal=True).double()
    torch.manual_seed(0)
    features = torch.randn(2, 41, 80, dtype=torch.float64)
    offline, _ = subsampler(features, torch.tensor([41, 41]))
    for piece in (1, 2, 5, 41):
        state = subsampler.init_state(2, features.device, torch.float64)
        pieces = []
        for start in range(0, 41, piece):
            out, state = subsampler.stream(features[:, start : start + piece], state)
            pieces.append(out)
        assert torch.allclose(torch.cat(pieces), offline, atol=1e-12), f"piece {piece}"


def test_subsampler_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        Conv1dSubsampler(80, 16, 8, (4, 5))


def test_subsampler_rejects_empty_utterance():
    subsampler = Conv1dSubsampler(80, 16, 8)
    with pytest.raises(ValueError, match="at least one feature frame"):
        subsampler(torch.randn(2, 5, 80), torch.tensor([5, 0]))


# ---------------------------------------------------------------------------
# model, offline
# ---------------------------------------------------------------------------


def model_log_probs(model, features, lengths, prev_tokens):
    logits, _ = model(features, lengths, prev_tokens)
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("mask", ["full", "causal", "chunk"])
@pytest.mark.parametrize("attention_type", ["leap", "softmax", "cosformer"])
def test_padded_batch_equals_each_alone(mask, attention_type):
    model, dictionary = build_model(attention_type, mask, k=2, ratio=3)
    torch.manual_seed(1)
    frame_counts = [61, 23, 3]
    target_counts = [9, 4, 6]
    features = torch.zeros(3, max(frame_counts), 80)
    prev_tokens = torch.full((3, max(target_counts)), dictionary.pad())
    for b, (frames, targets) in enumerate(zip(frame_counts, target_counts)):
        features[b, :frames] = torch.randn(frames, 80)
        prev_tokens[b, 0] = dictionary.eos()
        prev_tokens[b, 1:targets] = torch.randint(4, len(dictionary), (targets - 1,))
    with torch.no_grad():
        batch = model_log_probs(model, features, torch.tensor(frame_counts), prev_tokens)
        for b, (frames, targets) in enumerate(zip(frame_counts, target_counts)):
            alone = model_log_probs(model, features[b : b + 1, :frames], torch.tensor([frames]), prev_tokens[b : b + 1, :targets])
            error = (batch[b, :targets] - alone[0]).abs().max()
            assert error < TOLERANCE, f"utterance {b}: max error {error}"


@pytest.mark.parametrize("mask", ["full", "chunk"])
def test_source_shorter_than_receptive_field(mask):
    model, dictionary = build_model("leap", mask, k=3, ratio=9)
    prev_tokens = torch.tensor([[dictionary.eos(), 5, 6, 7]])
    with torch.no_grad():
        for frames in (1, 2, 3):
            encoder_out = model.encoder(torch.randn(1, frames, 80), torch.tensor([frames]))
            assert encoder_out["encoder_out"][0].shape[0] == 1
            log_probs = model_log_probs(model, torch.randn(1, frames, 80), torch.tensor([frames]), prev_tokens)
            assert torch.isfinite(log_probs).all(), f"{frames} frames"


def test_target_tail_sees_whole_source():
    """With 2 source chunks and k=1, tokens from index 1 on see the whole source, so changing the last state matters."""
    model, dictionary = build_model("leap", "chunk", k=1, ratio=3)
    torch.manual_seed(2)
    features = torch.randn(1, 24, 80)  # 6 encoder states = 2 chunks
    prev_tokens = torch.tensor([[dictionary.eos(), 5, 6, 7, 8, 9]])
    changed = features.clone()
    changed[0, 20:] += 3.0  # only the last encoder states change
    with torch.no_grad():
        before = model_log_probs(model, features, torch.tensor([24]), prev_tokens)
        after = model_log_probs(model, changed, torch.tensor([24]), prev_tokens)
    assert torch.allclose(before[0, 0], after[0, 0], atol=TOLERANCE), "token 0 sees only the first chunk"
    assert not torch.allclose(before[0, 1:], after[0, 1:], atol=TOLERANCE), "later tokens see the changed tail"


def test_incremental_decoding_equals_forward():
    model, dictionary = build_model("cosformer", "chunk", k=2, ratio=3)
    torch.manual_seed(3)
    features = torch.randn(2, 40, 80)
    lengths = torch.tensor([40, 29])
    prev_tokens = torch.tensor([[dictionary.eos(), 5, 6, 7, 8, 9, 10], [dictionary.eos(), 11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        full = model_log_probs(model, features, lengths, prev_tokens)
        encoder_out = model.encoder(features, lengths)
        incremental_state = {}
        for step in range(prev_tokens.size(1)):
            logits, _ = model.decoder(prev_tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=incremental_state)
            step_log_probs = torch.log_softmax(logits[:, -1], dim=-1)
            assert torch.allclose(step_log_probs, full[:, step], atol=TOLERANCE), f"step {step}"


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("attention_type", ["leap", "softmax"])
def test_sequence_generator_runs_waitk(beam, attention_type):
    model, dictionary = build_model(attention_type, "chunk", k=1, ratio=2)
    generator = SequenceGenerator([model], dictionary, beam_size=beam, max_len_b=12)
    torch.manual_seed(4)
    sample = {"net_input": {"src_tokens": torch.randn(2, 30, 80), "src_lengths": torch.tensor([30, 17])}}
    with torch.no_grad():
        hypotheses = generator.generate([model], sample)
    assert len(hypotheses) == 2
    for hypothesis in hypotheses:
        assert len(hypothesis) == beam
        assert hypothesis[0]["tokens"][-1] == dictionary.eos()


def test_greedy_generation_matches_streaming_agent():
    """Beam-1 fairseq generation and a greedy streaming agent write the same tokens."""
    model, dictionary = build_model("leap", "chunk", k=2, ratio=3)
    torch.manual_seed(5)
    frames = 45
    features = torch.randn(frames, 80)
    generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_b=10)
    with torch.no_grad():
        offline_tokens = generator.generate(
            [model], {"net_input": {"src_tokens": features.unsqueeze(0), "src_lengths": torch.tensor([frames])}}
        )[0][0]["tokens"].tolist()
        state = model.init_stream_state()
        written = []
        previous = dictionary.eos()
        start = 0
        # The generator forces EOS at max_len, so compare the tokens before the last one.
        while len(written) < len(offline_tokens) - 1:
            if model.should_write(state):
                state = model.feed_visible_source(state)
                log_probs, state = model.decoder_step(previous, state)
                log_probs[0, dictionary.pad()] = -float("inf")
                log_probs[0, dictionary.unk()] = -float("inf")
                if not written:
                    log_probs[0, dictionary.eos()] = -float("inf")  # the generator's min_len=1
                previous = int(log_probs[0].argmax())
                written.append(previous)
                if previous == dictionary.eos():
                    break
                continue
            _, state = model.stream_encoder(features[start : start + 8], state, finished=start + 8 >= frames)
            start += 8
    assert len(written) >= 1
    assert written == offline_tokens[: len(written)]


def test_generation_lagging_override():
    model, _ = build_model("leap", "chunk", k=2, ratio=3)
    lengths = torch.tensor([30])
    model.decoder.waitk_lagging = 4
    assert model.init_stream_state().waitk_lagging == 4
    assert waitk_prefix_lengths(2, lengths, model.decoder.current_waitk(), 3).tolist() == [[12, 15]]


def test_training_lagging_sampled_per_update():
    model, _ = build_model("leap", "chunk", k=3, ratio=3, waitk_lagging_train="1,2,3,4,5")
    model.train()
    draws = []
    for update in range(20):
        model.set_num_updates(update)
        draws.append(model.decoder.current_waitk())
    again = []
    for update in range(20):
        model.set_num_updates(update)
        again.append(model.decoder.current_waitk())
    assert draws == again, "the draw depends only on the seed and the update number"
    assert set(draws) <= {1, 2, 3, 4, 5}
    assert len(set(draws)) > 1
    model.eval()
    assert model.decoder.current_waitk() == 3, "validation and generation use --waitk-lagging"


def test_invalid_lagging_list_raises():
    with pytest.raises(ValueError, match="--waitk-lagging-train"):
        build_model("leap", "chunk", waitk_lagging_train="1,x")


def test_architectures_registered():
    assert ARCH_MODEL_REGISTRY["leap_s2t_waitk_s"] is LeapS2TWaitkModel
    args = Namespace(input_feat_per_channel=80, input_channels=1)
    ARCH_CONFIG_REGISTRY["leap_s2t_waitk_s"](args)
    assert (args.encoder_embed_dim, args.encoder_layers, args.decoder_layers) == (256, 12, 6)
    assert (args.encoder_attention_heads, args.encoder_ffn_embed_dim) == (4, 2048)
    assert args.encoder_attention_type == "leap"
    assert args.cross_attention_type == "leap"


def test_load_pretrained_encoder(tmp_path):
    asr_model, dictionary = build_model("leap", "chunk", seed=7)
    checkpoint = tmp_path / "asr.pt"
    # The smallest checkpoint layout that fairseq's load_checkpoint_to_cpu accepts.
    torch.save(
        {
            "model": asr_model.state_dict(),
            "args": None,
            "cfg": None,
            "optimizer_history": [{"criterion_name": "label_smoothed_cross_entropy", "optimizer_name": "adam", "lr_scheduler_state": {}, "num_updates": 0}],
            "extra_state": {"train_iterator": {"epoch": 1}},
        },
        checkpoint,
    )
    model, _ = build_model("leap", "chunk", seed=8, load_pretrained_encoder_from=str(checkpoint))
    for name, value in asr_model.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    assert not torch.equal(model.decoder.layers[0].ffn.fc1.weight, asr_model.decoder.layers[0].ffn.fc1.weight)


def test_load_pretrained_encoder_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_model("leap", "chunk", load_pretrained_encoder_from=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize(
    "overrides, option",
    [({"ratio": 0}, "--fixed-pre-decision-ratio"), ({"encoder_layers": 0}, "--encoder-layers"),
     ({"conv_channels": 0}, "--conv-channels")],
)
def test_zero_sizes_rejected(overrides, option):
    with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got 0"):
        build_model(**overrides)
