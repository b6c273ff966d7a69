"""Transformer language models whose causal self-attention is softmax, ReLU, cosFormer or LeaP.

The model ``leap_transformer_lm`` is fairseq's ``transformer_lm`` with one change: every decoder
layer builds its self-attention with :class:`leap_fairseq.modules.LeapMultiheadAttention`
(``causal=True``). With ``--decoder-attention-type softmax`` the model has the parameter names,
the parameter count and the outputs of ``transformer_lm`` at the same size. The embeddings,
positional embeddings, adaptive input and softmax, layer norms and feed-forward blocks are
fairseq's own.

Training runs the linear types (``relu``, ``cosformer``, ``leap``) in their causal O(N) form:
the decoder hands them no (T, T) future mask, and the attention module applies causality
itself. Incremental decoding (``fairseq-generate``, ``fairseq-interactive``) keeps a recurrent
state per layer in fairseq's ``incremental_state`` for the linear types, so one step costs the
same at every context length. Softmax keeps fairseq's key and value cache.

Registered architectures (``--arch``):

- ``leap_transformer_lm``: the defaults of fairseq's ``transformer_lm``;
- ``leap_transformer_lm_wiki103``: the sizes of ``transformer_lm_wiki103`` (16 layers, 1024
  dimensions, 8 heads, adaptive input and adaptive softmax);
- ``leap_transformer_lm_tiny``: 2 layers, 64 dimensions, for tests on CPU.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq import options
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerDecoder
from fairseq.models.transformer_lm import (
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    base_lm_architecture,
    transformer_lm_baevski_wiki103,
)
from fairseq.modules import AdaptiveInput, CharacterTokenEmbedder
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from fairseq.utils import safe_getattr

from leap_fairseq.modules import LeapMultiheadAttention

ATTENTION_TYPES = ("softmax", "relu", "cosformer", "leap")
LINEAR_ATTENTION_TYPES = ("relu", "cosformer", "leap")

DEFAULT_ATTENTION_TYPE = "leap"
DEFAULT_LEAP_HIDDEN_RATIO = 4


@dataclass
class LeapTransformerLanguageModelConfig(TransformerLanguageModelConfig):
    """fairseq's ``transformer_lm`` options plus the choice of self-attention."""

    decoder_attention_type: ChoiceEnum(ATTENTION_TYPES) = field(
        default=DEFAULT_ATTENTION_TYPE,
        metadata={
            "help": "self-attention of every decoder layer: softmax (fairseq's), relu, "
            "cosformer or leap (linear attention, causal O(N) in training, recurrent in decoding)"
        },
    )
    leap_hidden_ratio: int = field(
        default=DEFAULT_LEAP_HIDDEN_RATIO,
        metadata={
            "help": "LeaP proportion module: the head dimension divided by the width of its "
            "hidden layer; must divide the head dimension (used with --decoder-attention-type leap)"
        },
    )
    cosformer_horizon: Optional[int] = field(
        default=None,
        metadata={
            "help": "cosFormer re-weighting horizon M in tokens, cos(pi/2 * (i - j) / M) "
            "(used with --decoder-attention-type cosformer); default: LeapMultiheadAttention's (1024)"
        },
    )


@dataclass(frozen=True)
class SelfAttentionOptions:
    """The self-attention choice that every decoder layer of one model shares."""

    attention_type: str = DEFAULT_ATTENTION_TYPE
    leap_hidden_ratio: int = DEFAULT_LEAP_HIDDEN_RATIO
    cosformer_horizon: Optional[int] = None

    @classmethod
    def from_args(cls, args) -> "SelfAttentionOptions":
        """Read the options from an argparse namespace or an omegaconf model config."""
        attention_type = str(safe_getattr(args, "decoder_attention_type", DEFAULT_ATTENTION_TYPE))
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"--decoder-attention-type {attention_type!r} is not supported; "
                f"choose one of {', '.join(ATTENTION_TYPES)}"
            )
        leap_hidden_ratio = int(safe_getattr(args, "leap_hidden_ratio", DEFAULT_LEAP_HIDDEN_RATIO))
        if leap_hidden_ratio < 1:
            raise ValueError(f"--leap-hidden-ratio must be a positive integer, got {leap_hidden_ratio}")
        cosformer_horizon = safe_getattr(args, "cosformer_horizon", None)
        if cosformer_horizon is not None:
            cosformer_horizon = int(cosformer_horizon)
            if cosformer_horizon < 1:
                raise ValueError(f"--cosformer-horizon must be a positive number of tokens, got {cosformer_horizon}")
        return cls(attention_type, leap_hidden_ratio, cosformer_horizon)

    @property
    def is_linear(self) -> bool:
        return self.attention_type in LINEAR_ATTENTION_TYPES


class LeapTransformerDecoderLayer(TransformerDecoderLayerBase):
    """fairseq's decoder layer with causal :class:`LeapMultiheadAttention` as self-attention."""

    def __init__(self, cfg, attention_options: SelfAttentionOptions, no_encoder_attn=False):
        # TransformerDecoderLayerBase.__init__ calls build_self_attention, which reads this.
        self.attention_options = attention_options
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if cfg.cross_self_attention:
            raise ValueError("leap_transformer_lm does not support --cross-self-attention")
        if add_bias_kv or add_zero_attn:
            raise ValueError("leap_transformer_lm does not support add_bias_kv or add_zero_attn in self-attention")
        if cfg.decoder.xformers_att_config is not None:
            raise ValueError("leap_transformer_lm does not support --decoder-xformers-att-config")
        options = self.attention_options
        horizon = {} if options.cosformer_horizon is None else {"cosformer_horizon": options.cosformer_horizon}
        return LeapMultiheadAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
            attention_type=options.attention_type,
            causal=True,
            leap_hidden_ratio=options.leap_hidden_ratio,
            **horizon,
        )


class LeapTransformerDecoder(TransformerDecoder):
    """fairseq's Transformer decoder built from :class:`LeapTransformerDecoderLayer`.

    For the linear attention types the layers get no (T, T) future mask: the attention module is
    causal by construction, and the mask would cost O(T^2) memory.
    """

    def __init__(self, args, dictionary, embed_tokens, no_encoder_attn=True, output_projection=None):
        # TransformerDecoderBase.__init__ builds the layers, so the options must exist before it.
        self.attention_options = SelfAttentionOptions.from_args(args)
        super().__init__(
            args,
            dictionary,
            embed_tokens,
            no_encoder_attn=no_encoder_attn,
            output_projection=output_projection,
        )

    def build_decoder_layer(self, args, no_encoder_attn=False):
        cfg = TransformerConfig.from_namespace(args)
        layer = LeapTransformerDecoderLayer(cfg, self.attention_options, no_encoder_attn=no_encoder_attn)
        # The wrapping below is TransformerDecoderBase.build_decoder_layer's.
        checkpoint = cfg.checkpoint_activations
        if checkpoint:
            layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
        min_params_to_wrap = cfg.min_params_to_wrap if not checkpoint else 0
        return fsdp_wrap(layer, min_num_params=min_params_to_wrap)

    def buffered_future_mask(self, tensor):
        if self.attention_options.is_linear:
            return None
        return super().buffered_future_mask(tensor)


@register_model("leap_transformer_lm", dataclass=LeapTransformerLanguageModelConfig)
class LeapTransformerLanguageModel(TransformerLanguageModel):
    """fairseq's ``transformer_lm`` with a choice of causal self-attention (see the module docstring)."""

    @classmethod
    def hub_models(cls):
        # The pretrained models of transformer_lm are softmax models of another class.
        return {}

    @classmethod
    def build_model(cls, args, task):
        """Build the model; the steps before the decoder follow TransformerLanguageModel.build_model."""
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)

        embed_tokens = cls.build_input_embedding(args, task)
        if args.tie_adaptive_weights:
            check_tied_adaptive_weights(args)

        decoder = LeapTransformerDecoder(args, task.target_dictionary, embed_tokens, no_encoder_attn=True)
        return cls(decoder)

    @classmethod
    def build_input_embedding(cls, args, task):
        """Build the token embedding that --character-embeddings or --adaptive-input select."""
        dictionary = task.source_dictionary
        if args.character_embeddings:
            return CharacterTokenEmbedder(
                dictionary,
                eval(args.character_filters),  # fairseq's option is a Python literal, read the same way
                args.character_embedding_dim,
                args.decoder_embed_dim,
                args.char_embedder_highway_layers,
            )
        if args.adaptive_input:
            return AdaptiveInput(
                len(dictionary),
                dictionary.pad(),
                args.decoder_input_dim,
                args.adaptive_input_factor,
                args.decoder_embed_dim,
                options.eval_str_list(args.adaptive_input_cutoff, type=int),
                args.quant_noise_pq,
                args.quant_noise_pq_block_size,
            )
        return cls.build_embedding(args, dictionary, args.decoder_input_dim)


def check_tied_adaptive_weights(args) -> None:
    """Raise ValueError when --tie-adaptive-weights cannot tie the adaptive input and softmax."""
    if not args.adaptive_input:
        raise ValueError("--tie-adaptive-weights needs --adaptive-input")
    if args.adaptive_input_factor != args.adaptive_softmax_factor:
        raise ValueError(
            f"--tie-adaptive-weights needs --adaptive-input-factor ({args.adaptive_input_factor}) "
            f"equal to --adaptive-softmax-factor ({args.adaptive_softmax_factor})"
        )
    if args.adaptive_softmax_cutoff != args.adaptive_input_cutoff:
        raise ValueError(
            f"--tie-adaptive-weights needs --adaptive-softmax-cutoff ({args.adaptive_softmax_cutoff}) "
            f"equal to --adaptive-input-cutoff ({args.adaptive_input_cutoff})"
        )
    if args.decoder_input_dim != args.decoder_output_dim:
        raise ValueError(
            f"--tie-adaptive-weights needs --decoder-input-dim ({args.decoder_input_dim}) "
            f"equal to --decoder-output-dim ({args.decoder_output_dim})"
        )


def leap_attention_defaults(args) -> None:
    """Fill in the self-attention options that the command line left unset."""
    args.decoder_attention_type = safe_getattr(args, "decoder_attention_type", DEFAULT_ATTENTION_TYPE)
    args.leap_hidden_ratio = safe_getattr(args, "leap_hidden_ratio", DEFAULT_LEAP_HIDDEN_RATIO)
    args.cosformer_horizon = safe_getattr(args, "cosformer_horizon", None)


# The architecture "leap_transformer_lm" itself is registered by register_model, as fairseq does
# for "transformer_lm": its defaults are the dataclass defaults, which are transformer_lm's.


@register_model_architecture("leap_transformer_lm", "leap_transformer_lm_wiki103")
def leap_transformer_lm_wiki103(args):
    """transformer_lm_wiki103's sizes: 16 layers, 1024 dimensions, 8 heads, adaptive input and softmax."""
    leap_attention_defaults(args)
    transformer_lm_baevski_wiki103(args)


@register_model_architecture("leap_transformer_lm", "leap_transformer_lm_tiny")
def leap_transformer_lm_tiny(args):
    """2 layers of 64 dimensions and 4 heads, for tests and smoke runs on CPU."""
    leap_attention_defaults(args)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 64)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 256)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 4)
    args.dropout = safe_getattr(args, "dropout", 0.1)
    base_lm_architecture(args)
