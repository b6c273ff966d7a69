"""Builds a tiny leap_s2t_waitk model without a data folder, for the model tests."""

from argparse import Namespace
from types import SimpleNamespace

import torch

import leap_fairseq  # noqa: F401  (applies the compat patches, registers the model)
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from leap_fairseq.models.leap_s2t_waitk import LeapS2TWaitkModel


def build_model(attention_type="leap", mask="chunk", k=2, ratio=3, seed=0, **overrides):
    """Return (leap_s2t_waitk_tiny in eval mode, its 26-letter dictionary)."""
    dictionary = Dictionary()
    for symbol in "abcdefghijklmnopqrstuvwxyz":
        dictionary.add_symbol(symbol)
    args = Namespace(
        input_feat_per_channel=80,
        input_channels=1,
        seed=1,
        dropout=0.0,
        encoder_attention_type=attention_type,
        decoder_attention_type=attention_type,
        cross_attention_type=attention_type,
        encoder_attention_mask=mask,
        waitk_lagging=k,
        fixed_pre_decision_ratio=ratio,
        **overrides,
    )
    ARCH_CONFIG_REGISTRY["leap_s2t_waitk_tiny"](args)
    torch.manual_seed(seed)
    model = LeapS2TWaitkModel.build_model(args, SimpleNamespace(target_dictionary=dictionary))
    return model.eval(), dictionary
