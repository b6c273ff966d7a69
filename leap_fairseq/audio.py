"""Log-mel filterbank features, offline and online, and the audio reading around them.

One function, :func:`extract_fbank`, defines the features for the whole
project: the MuST-C data preparation calls it on every segment, and the
SimulEval agent calls it through :class:`OnlineFbank` on audio that arrives in
pieces. Both therefore see the same numbers for the same samples.

The features follow fairseq's speech-to-text recipe
(``examples/speech_to_text/data_utils.py``, fairseq 0.12.3): 80 Kaldi-compatible
log-mel filterbank bins from ``torchaudio.compliance.kaldi.fbank``, 25 ms
windows every 10 ms, no dither, ``snip_edges`` (only whole windows), and the
waveform scaled from [-1, 1] to the 16-bit integer range first, as Kaldi expects.

Waveforms are 1-D (samples,) for mono or 2-D (channels, samples), the layout of
torch and fairseq. soundfile returns (samples, channels), so transpose its
output. Multi-channel audio is mixed down to mono by averaging the channels,
as ``leap_fairseq.compat.convert_waveform`` (SoX ``channels 1``) does.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

# Importing leap_fairseq applies leap_fairseq.compat, which lets torchaudio's
# Python parts import when its C extension cannot load.
from leap_fairseq import compat

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms at 16 kHz

# A waveform whose peak is above this bound is on the 16-bit integer scale
# (values in the hundreds or thousands), not in [-1, 1]. Float audio may
# exceed 1.0 a little after resampling or in clipped float files, so the bound
# leaves room for that.
MAX_ABS_SAMPLE = 4.0

# More channels than this means the array is most likely (samples, channels).
MAX_CHANNELS = 16

# The speech encoder subsamples the filterbank frames 4x with two stride-2
# convolutions of kernel size 5 (leap_fairseq.modules.subsampler, the layout
# of fairseq's Conv1dSubsampler). MIN_FRAMES is the shortest input for which
# both layers produce one output from real frames only, without padding:
# 5 inputs per output in the last layer, so (5 - 1) * 2 + 5 = 13 frames
# (0.145 s of audio). The data preparation drops shorter segments.
SUBSAMPLING_KERNEL_SIZE = 5
SUBSAMPLING_STRIDE = 2
SUBSAMPLING_LAYERS = 2


def min_frames_for_subsampling(kernel_size: int, stride: int, num_layers: int) -> int:
    """Return the fewest input frames for which ``num_layers`` unpadded convolutions give one output."""
    frames = 1
    for _ in range(num_layers):
        frames = (frames - 1) * stride + kernel_size
    return frames


MIN_FRAMES = min_frames_for_subsampling(SUBSAMPLING_KERNEL_SIZE, SUBSAMPLING_STRIDE, SUBSAMPLING_LAYERS)


def num_frames(num_samples: int) -> int:
    """Return how many frames :func:`extract_fbank` gives for ``num_samples`` samples at 16 kHz."""
    if num_samples < WINDOW_SAMPLES:
        return 0
    return 1 + (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def _check_sample_rate(sample_rate: int, caller: str) -> None:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"{caller} expects {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; convert it first with "
            "leap_fairseq.audio.to_16k_mono"
        )


def _to_mono_float64(waveform, caller: str) -> np.ndarray:
    """Return a 1-D float64 copy of a mono or (channels, samples) float waveform."""
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().cpu().numpy()
    array = np.asarray(waveform)
    if array.size == 0:
        array = array.astype(np.float64)
    if array.dtype.kind != "f":
        raise ValueError(
            f"{caller} expects float samples in [-1, 1], got dtype {array.dtype}; "
            "divide 16-bit integer samples by 32768"
        )
    if array.ndim == 2:
        if array.shape[0] > MAX_CHANNELS:
            raise ValueError(
                f"{caller} expects a (channels, samples) waveform, got shape {array.shape} "
                f"(more than {MAX_CHANNELS} channels); transpose soundfile's (samples, channels) output"
            )
        array = array.astype(np.float64).mean(axis=0)
    elif array.ndim != 1:
        raise ValueError(f"{caller} expects a 1-D or (channels, samples) waveform, got shape {array.shape}")
    else:
        array = array.astype(np.float64)
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{caller} got a waveform with NaN or infinite samples")
    peak = float(np.abs(array).max()) if array.size else 0.0
    if peak > MAX_ABS_SAMPLE:
        raise ValueError(
            f"{caller} expects samples in [-1, 1], got a peak of {peak:g}; divide 16-bit integer samples by 32768"
        )
    return array


def _fbank_of_mono(samples: np.ndarray) -> np.ndarray:
    """Compute the filterbank of 1-D float64 samples in [-1, 1] at 16 kHz."""
    count = num_frames(samples.shape[0])
    if count == 0:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    import torch
    import torchaudio.compliance.kaldi as kaldi

    # Kaldi works on the 16-bit integer scale. In float32, the batched FFT and
    # matrix product round differently for different numbers of frames per
    # call. In float64 a frame's value does not depend on that, so
    # OnlineFbank's output equals the offline output. The result is float32.
    scaled = torch.from_numpy(samples * 32768.0).unsqueeze(0)
    features = kaldi.fbank(
        scaled,
        num_mel_bins=NUM_MEL_BINS,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        dither=0.0,
        sample_frequency=float(SAMPLE_RATE),
    )
    result = features.to(torch.float32).numpy()
    assert result.shape == (count, NUM_MEL_BINS), (result.shape, count)
    return result


def extract_fbank(waveform, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Compute 80-dim log-mel filterbank features of a whole utterance.

    Args:
        waveform: float samples in [-1, 1] at 16 kHz, (samples,) or
            (channels, samples); a numpy array, a torch tensor or a list.
            Channels are averaged to mono.
        sample_rate: must be 16000; convert other rates with :func:`to_16k_mono`.

    Returns:
        float32 array (frames, 80), frames = :func:`num_frames` (samples), which
        is 0 for fewer than 400 samples (25 ms).

    Raises:
        ValueError: for another sample rate, integer samples, samples outside
            [-1, 1] by far, or a badly shaped array.
    """
    _check_sample_rate(sample_rate, "extract_fbank")
    return _fbank_of_mono(_to_mono_float64(waveform, "extract_fbank"))


@dataclass
class OnlineFbank:
    """Streaming filterbank extractor whose output equals :func:`extract_fbank`.

    Feed audio in pieces of any size with :meth:`accept`. Each call returns the
    frames whose 25 ms window is complete, so the concatenation of all returned
    arrays equals ``extract_fbank`` of the concatenated audio. Samples that do
    not yet complete a window wait in ``pending``.

    Attributes:
        sample_rate: must be 16000.
        pending: float64 (P,) mono samples from the start of the next frame's
            window onwards, P < 400 after every :meth:`accept`.
        num_channels: channel count of the first piece (1 for 1-D pieces);
            later pieces must match. None before the first piece.
        samples_accepted: samples received since the last reset.
        frames_emitted: frames returned since the last reset; frame i covers
            samples [160 i, 160 i + 400).
    """

    sample_rate: int = SAMPLE_RATE
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    num_channels: Optional[int] = None
    samples_accepted: int = 0
    frames_emitted: int = 0

    def __post_init__(self):
        _check_sample_rate(self.sample_rate, "OnlineFbank")

    def reset(self) -> None:
        """Forget all audio, ready for a new utterance."""
        self.pending = np.zeros(0, dtype=np.float64)
        self.num_channels = None
        self.samples_accepted = 0
        self.frames_emitted = 0

    def accept(self, waveform, sample_rate: Optional[int] = None) -> np.ndarray:
        """Add a piece of audio and return the new frames, float32 (new_frames, 80).

        Args:
            waveform: float samples in [-1, 1], (samples,) or (channels, samples),
                with the same channel count as earlier pieces. Empty pieces are fine.
            sample_rate: when given, must be 16000.
        """
        if sample_rate is not None:
            _check_sample_rate(sample_rate, "OnlineFbank.accept")
        channels = _channel_count(waveform)
        if self.num_channels is None:
            self.num_channels = channels
        elif channels != self.num_channels:
            raise ValueError(
                f"OnlineFbank.accept got {channels} channel(s) after {self.num_channels}; call reset() "
                "between utterances, and pass (channels, samples) arrays"
            )
        samples = _to_mono_float64(waveform, "OnlineFbank.accept")
        self.samples_accepted += samples.shape[0]
        buffer = np.concatenate([self.pending, samples]) if self.pending.size else samples
        count = num_frames(buffer.shape[0])
        if count == 0:
            self.pending = buffer
            return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
        used = (count - 1) * HOP_SAMPLES + WINDOW_SAMPLES
        features = _fbank_of_mono(buffer[:used])
        self.pending = buffer[count * HOP_SAMPLES:].copy()
        self.frames_emitted += count
        return features


def _channel_count(waveform) -> int:
    shape = tuple(waveform.shape) if hasattr(waveform, "shape") else np.shape(waveform)
    return shape[0] if len(shape) == 2 else 1


# ---------------------------------------------------------------------------
# Global CMVN
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalCMVN:
    """Global cepstral mean and variance normalisation, as fairseq's ``global_cmvn`` transform.

    Attributes:
        mean: float32 (80,) per-bin mean over the training features.
        std: float32 (80,) per-bin standard deviation (the data preparation
            floors it at 1e-4, as fairseq's recipe does).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def load(cls, stats_npz_path: Union[str, Path]) -> "GlobalCMVN":
        """Load the ``mean`` and ``std`` arrays of a gcmvn.npz file."""
        path = Path(stats_npz_path)
        if not path.is_file():
            raise FileNotFoundError(f"global CMVN statistics not found: {path}")
        with np.load(path) as stats:
            missing = [key for key in ("mean", "std") if key not in stats]
            if missing:
                raise ValueError(f"{path} lacks the array(s) {missing}; it needs 'mean' and 'std'")
            return cls(mean=stats["mean"], std=stats["std"])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Normalise (frames, 80) features: (x - mean) / std, the operations fairseq applies."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"global CMVN expects (frames, {self.mean.shape[0]}) features, got {features.shape}")
        return np.divide(np.subtract(features, self.mean), self.std)


# ---------------------------------------------------------------------------
# Reading audio files
# ---------------------------------------------------------------------------


def segment_sample_range(offset_s: float, duration_s: float, sample_rate: int) -> Tuple[int, int]:
    """Return (first sample, sample count) of a segment given in seconds.

    Both are truncated towards zero, as fairseq's MuST-C recipe does
    (``int(float(seconds) * sample_rate)``).
    """
    return int(float(offset_s) * sample_rate), int(float(duration_s) * sample_rate)


def read_wav_segment(
    path: Union[str, Path], offset_s: float = 0.0, duration_s: Optional[float] = None
) -> Tuple[np.ndarray, int]:
    """Read part of an audio file with soundfile.

    Args:
        path: any file soundfile reads (wav, flac).
        offset_s: start in seconds.
        duration_s: length in seconds; None reads to the end.

    Returns:
        (waveform, sample_rate): float32 (channels, samples) in [-1, 1] at the
        file's own rate.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the segment starts before 0 or ends after the file.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    info = soundfile.info(str(path))
    if duration_s is None:
        start, _ = segment_sample_range(offset_s, 0.0, info.samplerate)
        count = info.frames - start
    else:
        start, count = segment_sample_range(offset_s, duration_s, info.samplerate)
    if start < 0 or count < 0 or start + count > info.frames:
        raise ValueError(
            f"segment offset {offset_s} s, duration {duration_s} s (samples {start} to {start + count}) "
            f"is outside {path}, which has {info.frames} samples ({info.frames / info.samplerate:.3f} s)"
        )
    data, sample_rate = soundfile.read(str(path), start=start, frames=count, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), sample_rate


def to_16k_mono(waveform, sample_rate: int, source: str = "audio", warn: bool = True) -> np.ndarray:
    """Convert a (channels, samples) or 1-D float waveform to 16 kHz mono.

    Resampling uses ``torchaudio.functional.resample`` and the mono mix averages
    the channels (both through ``leap_fairseq.compat.convert_waveform``).
    Audio that is already 16 kHz mono is returned unchanged.

    Args:
        source: name of the audio in the warning, e.g. the file path.
        warn: log a warning when a conversion happens.

    Returns:
        float32 (samples,).
    """
    array = waveform.detach().cpu().numpy() if hasattr(waveform, "detach") else np.asarray(waveform)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise ValueError(f"to_16k_mono expects a 1-D or (channels, samples) waveform, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if sample_rate == SAMPLE_RATE and array.shape[0] == 1:
        return array[0]
    if warn:
        logger.warning(
            "%s is %d Hz with %d channel(s); converting to %d Hz mono", source, sample_rate, array.shape[0], SAMPLE_RATE
        )
    converted, _ = compat.convert_waveform(array, sample_rate, to_mono=True, to_sample_rate=SAMPLE_RATE)
    return np.ascontiguousarray(converted[0], dtype=np.float32)


def converted_length(num_samples: int, sample_rate: int) -> int:
    """Return the length of ``num_samples`` samples at ``sample_rate`` after :func:`to_16k_mono`.

    ``torchaudio.functional.resample`` returns ceil(n * 16000 / rate) samples.
    """
    if sample_rate == SAMPLE_RATE:
        return num_samples
    return -(-num_samples * SAMPLE_RATE // sample_rate)


def load_audio_16k_mono(
    path: Union[str, Path], offset_s: float = 0.0, duration_s: Optional[float] = None, warn: bool = True
) -> np.ndarray:
    """Read a segment of an audio file as float32 16 kHz mono samples (samples,)."""
    waveform, sample_rate = read_wav_segment(path, offset_s, duration_s)
    return to_16k_mono(waveform, sample_rate, source=str(path), warn=warn)


__all__: Sequence[str] = [
    "SAMPLE_RATE",
    "NUM_MEL_BINS",
    "MIN_FRAMES",
    "num_frames",
    "extract_fbank",
    "OnlineFbank",
    "GlobalCMVN",
    "segment_sample_range",
    "read_wav_segment",
    "to_16k_mono",
    "converted_length",
    "load_audio_16k_mono",
]
