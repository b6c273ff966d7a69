"""Convolutional subsampler for speech features: stride-2 1-D convolutions with GLU.

Each layer is ``Conv1d(in, 2 * out, kernel, stride=2)`` followed by a GLU over
channels, so two layers turn 10 ms filterbank frames into 40 ms encoder states.
Every layer maps T inputs to ceil(T / 2) outputs in both padding modes, so a
source of one frame still gives one encoder state.

- ``causal=False`` pads ``kernel // 2`` zeros on both sides (fairseq's
  ``Conv1dSubsampler`` layout): output ``j`` sees inputs ``[2j - k//2, 2j + k//2]``.
- ``causal=True`` pads ``kernel - 1`` zeros on the left only: output ``j``
  sees inputs ``[2j - kernel + 1, 2j]``, so it is final as soon as input
  ``2j`` has arrived and the streamed output equals the offline output.
"""

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

STRIDE = 2


@dataclass
class SubsamplerState:
    """Streaming state of :class:`Conv1dSubsampler` (``causal=True`` only).

    Attributes:
        buffers: one tensor per layer, (B, C_in of that layer, L): the inputs
            not yet consumed by a complete stride, starting with the
            ``kernel - 1`` left-context samples of the next output. Starts as
            ``kernel - 1`` zeros, the causal left padding.
        num_frames_in: feature frames received so far.
        num_states_out: encoder states emitted so far (ceil(ceil(n / 2) / 2)
            after n frames).
    """

    buffers: List[Tensor] = field(default_factory=list)
    num_frames_in: int = 0
    num_states_out: int = 0


def subsampled_lengths(lengths: Tensor, num_layers: int) -> Tensor:
    """Return ceil(length / 2) applied ``num_layers`` times (the output lengths)."""
    out = lengths.long()
    for _ in range(num_layers):
        out = torch.div(out + 1, STRIDE, rounding_mode="floor")
    return out


class Conv1dSubsampler(nn.Module):
    """Stride-2 GLU convolutions over (B, T, C) features, with an exact streaming mode.

    Args:
        in_channels: feature dimension (80 for the filterbank).
        mid_channels: channels between the layers.
        out_channels: encoder dimension.
        kernel_sizes: one odd kernel size per layer.
        causal: pad on the left only (required for :meth:`stream`).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 5), causal: bool = True):
        super().__init__()
        if len(kernel_sizes) < 1:
            raise ValueError("the subsampler needs at least one convolution layer")
        for kernel in kernel_sizes:
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"subsampler kernel sizes must be odd and >= 1, got {list(kernel_sizes)}")
        self.in_channels = in_channels
        self.kernel_sizes = list(kernel_sizes)
        self.causal = causal
        num_layers = len(self.kernel_sizes)
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_channels if i == 0 else mid_channels,
                (out_channels if i == num_layers - 1 else mid_channels) * 2,
                kernel,
                stride=STRIDE,
            )
            for i, kernel in enumerate(self.kernel_sizes)
        )

    @property
    def num_layers(self) -> int:
        return len(self.kernel_sizes)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return subsampled_lengths(lengths, self.num_layers)

    def _padding(self, kernel: int) -> Tuple[int, int]:
        if self.causal:
            return kernel - 1, 0
        return kernel // 2, kernel // 2

    def forward(self, features: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """Subsample a padded batch.

        Args:
            features: (B, T, C_in), right-padded.
            lengths: LongTensor (B,), valid frames per utterance, each >= 1.

        Returns:
            (T_out, B, C_out) states and LongTensor (B,) output lengths.
            Positions past an utterance's output length hold zeros.
        """
        if features.dim() != 3 or features.size(2) != self.in_channels:
            raise ValueError(f"expected features of shape (batch, frames, {self.in_channels}), got {tuple(features.shape)}")
        if lengths.numel() and int(lengths.min()) < 1:
            raise ValueError(f"every utterance needs at least one feature frame, got lengths {lengths.tolist()}")
        x = features.transpose(1, 2)  # B x C x T
        current_lengths = lengths.long()
        for conv, kernel in zip(self.conv_layers, self.kernel_sizes):
            # Zero the padded frames so that in the symmetric mode the right
            # edge of a short utterance sees the same zeros as its conv padding.
            x = _zero_after(x, current_lengths)
            x = F.glu(conv(F.pad(x, self._padding(kernel))), dim=1)
            current_lengths = torch.div(current_lengths + 1, STRIDE, rounding_mode="floor")
        x = _zero_after(x, current_lengths)
        return x.permute(2, 0, 1).contiguous(), current_lengths

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> SubsamplerState:
        """Return the state before any frame: each layer's buffer contains its left padding."""
        if not self.causal:
            raise RuntimeError("only the causal subsampler can stream: the symmetric one needs right context")
        buffers = []
        for i, (conv, kernel) in enumerate(zip(self.conv_layers, self.kernel_sizes)):
            buffers.append(torch.zeros(batch_size, conv.in_channels, kernel - 1, device=device, dtype=dtype))
        return SubsamplerState(buffers=buffers)

    def stream(self, features_new: Tensor, state: SubsamplerState) -> Tuple[Tensor, SubsamplerState]:
        """Consume new frames and return the encoder states they complete.

        Args:
            features_new: (B, T_new, C_in); T_new may be 0.
            state: from :meth:`init_state` or a previous call.

        Returns:
            (T_out, B, C_out) new states (T_out may be 0) and the updated state.
            After n frames in total, ceil(ceil(n / 2) / 2) states have been
            emitted, identical to :meth:`forward` on the n frames.
        """
        if features_new.dim() != 3 or features_new.size(2) != self.in_channels:
            raise ValueError(f"expected features of shape (batch, frames, {self.in_channels}), got {tuple(features_new.shape)}")
        x = features_new.transpose(1, 2)
        new_buffers = []
        for conv, kernel, buffer in zip(self.conv_layers, self.kernel_sizes, state.buffers):
            x = torch.cat([buffer, x.to(buffer.dtype)], dim=2)
            available = x.size(2)
            num_out = (available - kernel) // STRIDE + 1 if available >= kernel else 0
            # The next output starts STRIDE samples after the last one computed.
            new_buffers.append(x[:, :, num_out * STRIDE :])
            if num_out > 0:
                x = F.glu(conv(x[:, :, : (num_out - 1) * STRIDE + kernel]), dim=1)
            else:
                x = x.new_zeros(x.size(0), conv.out_channels // 2, 0)
        new_state = SubsamplerState(
            buffers=new_buffers,
            num_frames_in=state.num_frames_in + features_new.size(1),
            num_states_out=state.num_states_out + x.size(2),
        )
        return x.permute(2, 0, 1).contiguous(), new_state


def _zero_after(x: Tensor, lengths: Tensor) -> Tensor:
    """Zero x (B, C, T) at time steps >= lengths[b]."""
    mask = torch.arange(x.size(2), device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
    return x * mask.unsqueeze(1).to(x.dtype)
