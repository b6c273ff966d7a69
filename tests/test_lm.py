"""leap_transformer_lm: registration, parity with transformer_lm, causality and incremental decoding."""

import argparse
import warnings

import pytest
import torch

import leap_fairseq  # noqa: F401  (registers the models)
from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.models.transformer_lm import transformer_lm_baevski_wiki103
from fairseq.tasks.language_modeling import LanguageModelingTask

from leap_fairseq.models.leap_transformer_lm import (
    LeapTransformerLanguageModel,
    SelfAttentionOptions,
    leap_transformer_lm_wiki103,
)
from leap_fairseq.modules import LeapMultiheadAttention

ATTENTION_TYPES = ["softmax", "relu", "cosformer", "leap"]
LINEAR_TYPES = ["relu", "cosformer", "leap"]
TINY_SIZE = [
    "--decoder-layers", "2",
    "--decoder-embed-dim", "64",
    "--decoder-ffn-embed-dim", "128",
    "--decoder-attention-heads", "4",
]


def make_dictionary(size=44) -> Dictionary:
    dictionary = Dictionary()
    for index in range(size):
        dictionary.add_symbol(f"word{index}")
    return dictionary


def build_lm(arch, extra=(), dictionary=None, seed=0):
    """Build a language model as fairseq-train does, from command-line words, in eval mode."""
    dictionary = dictionary or make_dictionary()
    parser = options.get_training_parser()
    words = ["unused-data-dir", "--task", "language_modeling", "--arch", arch, "--tokens-per-sample", "128", *extra]
    args = options.parse_args_and_arch(parser, words)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = convert_namespace_to_omegaconf(args)
    task = LanguageModelingTask(cfg.task, dictionary, dictionary)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    return model.eval(), cfg


def random_tokens(dictionary, batch, length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(dictionary.nspecial, len(dictionary), (batch, length), generator=generator)


def full_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def incremental_logits(model, tokens, reorder_at=None, new_order=None):
    """Decode one token at a time with incremental_state, as fairseq's SequenceGenerator does.

    With reorder_at, the state is reordered by new_order before position reorder_at, and from
    then on the rows of tokens[new_order] are fed.
    """
    state = {}
    steps = []
    current = tokens
    with torch.no_grad():
        for step in range(tokens.shape[1]):
            if reorder_at is not None and step == reorder_at:
                model.decoder.reorder_incremental_state_scripting(state, new_order)
                current = tokens[new_order]
            out, _ = model.decoder(current[:, : step + 1], incremental_state=state)
            steps.append(out)
    return torch.cat(steps, dim=1)


# ---------------------------------------------------------------------------
# registration and options
# ---------------------------------------------------------------------------


def test_architectures_registered():
    for arch in ["leap_transformer_lm", "leap_transformer_lm_wiki103", "leap_transformer_lm_tiny"]:
        assert ARCH_MODEL_REGISTRY[arch] is LeapTransformerLanguageModel


def test_default_attention_is_leap():
    model, cfg = build_lm("leap_transformer_lm_tiny")
    assert cfg.model.decoder_attention_type == "leap"
    assert cfg.model.leap_hidden_ratio == 4
    for layer in model.decoder.layers:
        assert isinstance(layer.self_attn, LeapMultiheadAttention)
        assert layer.self_attn.attention_type == "leap"
        assert layer.self_attn.causal
    assert any("proportion" in name for name in model.state_dict())


def test_attention_options_reach_layers():
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", "cosformer", "--cosformer-horizon", "300"])
    for layer in model.decoder.layers:
        assert layer.self_attn.attention_type == "cosformer"
        assert layer.self_attn.cosformer_horizon == 300


def test_tiny_arch_sizes():
    model, cfg = build_lm("leap_transformer_lm_tiny")
    assert len(model.decoder.layers) == 2
    assert cfg.model.decoder_embed_dim == 64
    assert cfg.model.decoder_attention_heads == 4
    assert cfg.model.decoder_normalize_before


def test_wiki103_arch_matches_fairseq():
    ours, theirs = argparse.Namespace(), argparse.Namespace()
    leap_transformer_lm_wiki103(ours)
    transformer_lm_baevski_wiki103(theirs)
    for name, value in vars(theirs).items():
        assert getattr(ours, name) == value, name
    assert ours.decoder_layers == 16
    assert ours.decoder_embed_dim == 1024
    assert ours.decoder_attention_heads == 8
    assert ours.adaptive_input
    assert ours.adaptive_softmax_cutoff == "20000,60000"
    assert ours.decoder_attention_type == "leap"


def test_invalid_options_rejected():
    with pytest.raises(ValueError, match="decoder-attention-type"):
        SelfAttentionOptions.from_args(argparse.Namespace(decoder_attention_type="performer"))
    with pytest.raises(ValueError, match="leap-hidden-ratio"):
        SelfAttentionOptions.from_args(argparse.Namespace(leap_hidden_ratio=0))
    with pytest.raises(ValueError, match="cosformer-horizon"):
        SelfAttentionOptions.from_args(argparse.Namespace(cosformer_horizon=-5))
    with pytest.raises(SystemExit):
        build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", "performer"])


# ---------------------------------------------------------------------------
# softmax is fairseq's transformer_lm
# ---------------------------------------------------------------------------

PARITY_CASES = {
    # fairseq's transformer_lm defaults (post-norm), at a small size
    "base": ("leap_transformer_lm", "transformer_lm", TINY_SIZE),
    # base_lm_architecture (pre-norm) with learned positions and shared embeddings
    "prenorm": (
        "leap_transformer_lm_tiny",
        "transformer_lm_big",
        TINY_SIZE + ["--decoder-learned-pos", "--share-decoder-input-output-embed"],
    ),
    # transformer_lm_wiki103's structure (adaptive input and softmax, tied) at a small size
    "wiki103": (
        "leap_transformer_lm_wiki103",
        "transformer_lm_wiki103",
        TINY_SIZE + ["--adaptive-input-cutoff", "10,20", "--adaptive-softmax-cutoff", "10,20"],
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_softmax_matches_transformer_lm(case):
    leap_arch, fairseq_arch, size = PARITY_CASES[case]
    ours, _ = build_lm(leap_arch, size + ["--decoder-attention-type", "softmax"], seed=1)
    theirs, _ = build_lm(fairseq_arch, size, seed=2)
    assert type(theirs).__name__ == "TransformerLanguageModel"

    our_shapes = {name: tuple(tensor.shape) for name, tensor in ours.state_dict().items()}
    their_shapes = {name: tuple(tensor.shape) for name, tensor in theirs.state_dict().items()}
    assert our_shapes == their_shapes
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())

    ours.load_state_dict(theirs.state_dict(), strict=True)
    tokens = random_tokens(make_dictionary(), batch=3, length=29)
    with torch.no_grad():
        our_probs = ours.get_normalized_probs(ours(tokens), log_probs=True)
        their_probs = theirs.get_normalized_probs(theirs(tokens), log_probs=True)
    torch.testing.assert_close(our_probs, their_probs, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# causality, training form and incremental decoding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention_type", LINEAR_TYPES)
def test_linear_types_get_no_future_mask(attention_type):
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
    assert model.decoder.buffered_future_mask(torch.zeros(5, 2, 64)) is None


def test_softmax_keeps_future_mask():
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", "softmax"])
    mask = model.decoder.buffered_future_mask(torch.zeros(5, 2, 64))
    assert mask.shape == (5, 5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_full_forward_is_causal(attention_type):
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
    dictionary = make_dictionary()
    tokens = random_tokens(dictionary, batch=2, length=40, seed=3)
    changed = tokens.clone()
    changed[:, 23:] = random_tokens(dictionary, batch=2, length=17, seed=4)
    torch.testing.assert_close(full_logits(model, tokens)[:, :23], full_logits(model, changed)[:, :23])
    assert not torch.allclose(full_logits(model, tokens)[:, 23:], full_logits(model, changed)[:, 23:])


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_incremental_matches_full_forward(attention_type):
    # 37 positions: not a multiple of the attention module's chunk size
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
    tokens = random_tokens(make_dictionary(), batch=3, length=37, seed=5)
    expected = full_logits(model, tokens)
    actual = incremental_logits(model, tokens)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_incremental_after_beam_reorder(attention_type):
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
    tokens = random_tokens(make_dictionary(), batch=4, length=31, seed=6)
    # Beam search reorders with repeated rows: hypotheses 0 and 2 both continue beam 2.
    new_order = torch.tensor([2, 0, 2, 3])
    reorder_at = 13
    actual = incremental_logits(model, tokens, reorder_at=reorder_at, new_order=new_order)
    before = full_logits(model, tokens)[:, :reorder_at]
    after = full_logits(model, tokens[new_order])[:, reorder_at:]
    torch.testing.assert_close(actual[:, :reorder_at], before, rtol=0, atol=1e-4)
    torch.testing.assert_close(actual[:, reorder_at:], after, rtol=0, atol=1e-4)


@pytest.mark.parametrize("attention_type", LINEAR_TYPES)
def test_incremental_state_size_is_constant(attention_type):
    model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
    tokens = random_tokens(make_dictionary(), batch=2, length=20, seed=7)
    state = {}
    sizes = []
    with torch.no_grad():
        for step in range(tokens.shape[1]):
            model.decoder(tokens[:, : step + 1], incremental_state=state)
            sizes.append(sum(value.numel() for buffer in state.values() for value in buffer.values() if value is not None))
    assert len(set(sizes)) == 1, sizes


def test_trains_one_step():
    model, _ = build_lm("leap_transformer_lm_tiny")
    model.train()
    tokens = random_tokens(make_dictionary(), batch=2, length=33, seed=8)
    logits = model(tokens[:, :-1])[0]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    proportion_grads = [p.grad for name, p in model.named_parameters() if "proportion" in name]
    assert proportion_grads
    assert all(grad is not None and torch.isfinite(grad).all() for grad in proportion_grads)
    assert any(grad.abs().sum() > 0 for grad in proportion_grads)


def test_parameters_beyond_softmax():
    softmax, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", "softmax"])
    base = set(softmax.state_dict())
    for attention_type in LINEAR_TYPES:
        model, _ = build_lm("leap_transformer_lm_tiny", ["--decoder-attention-type", attention_type])
        names = set(model.state_dict())
        assert base <= names, attention_type
        extra = names - base
        if attention_type == "leap":
            assert extra
            assert all(".self_attn.feature_map." in name and "_proportion." in name for name in extra), extra
        else:
            assert not extra, (attention_type, extra)
