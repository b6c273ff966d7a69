"""The agent's feature path: SimulEval speech segments to normalized filterbank frames.

The frames come from :class:`leap_fairseq.audio.OnlineFbank`, which returns exactly the frames
that the data preparation's :func:`leap_fairseq.audio.extract_fbank` computes for the whole
utterance. They are then normalized with the global CMVN statistics named in the data config,
as fairseq's ``global_cmvn`` feature transform does at training time.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from leap_fairseq.audio import NUM_MEL_BINS, SAMPLE_RATE, GlobalCMVN, OnlineFbank

logger = logging.getLogger(__name__)


class SampleRateError(ValueError):
    """The source audio is not at the sample rate the model was trained on."""


def segment_to_waveform(content: Sequence, num_channels_hint: Optional[int] = None) -> np.ndarray:
    """Convert the samples of one SimulEval speech segment to a float32 waveform.

    SimulEval 1.1.4 reads wav files with ``soundfile.read`` and sends ``samples.tolist()``, so a
    mono file gives a list of floats and a file with C channels a list of C-element lists
    (samples, channels).

    Returns:
        float32 (samples,) for mono, (channels, samples) for multi-channel audio.
    """
    array = np.asarray(content, dtype=np.float32)
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    if array.ndim == 1:
        if array.size == 0 and num_channels_hint and num_channels_hint > 1:
            return np.zeros((num_channels_hint, 0), dtype=np.float32)
        return array
    raise ValueError(f"speech segment has samples of shape {array.shape}; expected (samples,) or (samples, channels)")


@dataclass
class OnlineFeatureExtractor:
    """Streaming filterbank plus global CMVN, equal frame for frame to the offline features.

    Attributes:
        cmvn: global mean and variance normalization, or None when the data config has none.
        fbank: the streaming filterbank, whose ``pending`` samples carry over between segments.
        num_channels: channel count of the current utterance (None before its first samples).
        num_frames: frames returned since the last reset.
    """

    cmvn: Optional[GlobalCMVN] = None
    fbank: OnlineFbank = field(default_factory=OnlineFbank)
    num_channels: Optional[int] = None
    num_frames: int = 0

    def reset(self) -> None:
        """Forget the current utterance."""
        self.fbank.reset()
        self.num_channels = None
        self.num_frames = 0

    def accept(self, content: Sequence, sample_rate: int) -> torch.Tensor:
        """Take the samples of one segment and return the new frames as float32 (new_frames, 80).

        Stereo and other multi-channel audio is averaged to mono. Samples that do not complete
        a 25 ms window yet are kept for the next call.

        Raises:
            SampleRateError: ``sample_rate`` is not 16000 Hz.
            ValueError: the channel count changes within an utterance.
        """
        if sample_rate != SAMPLE_RATE:
            raise SampleRateError(
                f"the source audio is {sample_rate} Hz, but the model takes {SAMPLE_RATE} Hz audio. "
                f"Resample every wav file in the --source list to {SAMPLE_RATE} Hz and run again, for example "
                f"with 'sox IN.wav -r {SAMPLE_RATE} OUT.wav', or re-run data_prep/prep_mustc_data.py, which "
                f"writes {SAMPLE_RATE} Hz wav files and their list to simuleval/SPLIT.wav_list. "
                "In Python, leap_fairseq.audio.to_16k_mono resamples a waveform"
            )
        waveform = segment_to_waveform(content, self.num_channels)
        channels = waveform.shape[0] if waveform.ndim == 2 else 1
        if waveform.shape[-1] == 0:
            return torch.zeros((0, NUM_MEL_BINS), dtype=torch.float32)
        if self.num_channels is None:
            self.num_channels = channels
            if channels > 1:
                logger.info("source has %d channels; averaging them to mono", channels)
        frames = self.fbank.accept(waveform, sample_rate)
        if self.cmvn is not None and frames.shape[0] > 0:
            frames = self.cmvn(frames).astype(np.float32, copy=False)
        self.num_frames += frames.shape[0]
        return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
