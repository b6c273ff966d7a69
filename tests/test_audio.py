"""Tests of leap_fairseq.audio: the filterbank, its online form, CMVN and audio reading."""

import logging

import numpy as np
import pytest
import soundfile
import torch

import leap_fairseq  # noqa: F401  (applies the compat patches before torchaudio is imported)
from leap_fairseq import audio


def noise(num_samples, seed=0, channels=None, scale=0.3):
    rng = np.random.default_rng(seed)
    shape = (num_samples,) if channels is None else (channels, num_samples)
    return (rng.standard_normal(shape) * scale).clip(-1, 1).astype(np.float32)


def stream(extractor, waveform, piece_sizes):
    """Feed ``waveform`` (last axis = samples) in pieces, cycling through piece_sizes; concatenate the output."""
    outputs, position, turn = [], 0, 0
    length = waveform.shape[-1]
    while position < length:
        size = piece_sizes[turn % len(piece_sizes)]
        outputs.append(extractor.accept(waveform[..., position:position + size]))
        position += size
        turn += 1
    return np.concatenate(outputs) if outputs else np.zeros((0, audio.NUM_MEL_BINS), np.float32)


@pytest.fixture(scope="module")
def jfk(shared_data):
    samples, rate = soundfile.read(str(shared_data / "speech" / "real" / "jfk.wav"), dtype="float32")
    assert rate == 16000
    assert samples.ndim == 1
    return samples


# ---------------------------------------------------------------------------
# extract_fbank
# ---------------------------------------------------------------------------


def test_fbank_real_speech_shape(jfk):
    features = audio.extract_fbank(jfk, 16000)
    assert features.dtype == np.float32
    assert features.shape == (audio.num_frames(jfk.shape[0]), 80)
    assert features.shape[0] == 1 + (jfk.shape[0] - 400) // 160
    assert np.isfinite(features).all()


def test_fbank_matches_fairseq_recipe(jfk):
    # fairseq's recipe: scale to 16-bit range, then torchaudio's Kaldi fbank in float32.
    from fairseq.data.audio.audio_utils import _get_torchaudio_fbank

    reference = _get_torchaudio_fbank((jfk[np.newaxis] * 32768).astype(np.float32), 16000, 80)
    features = audio.extract_fbank(jfk)
    assert reference.shape == features.shape
    # The two differ only by float32 rounding in fairseq's path (largest in
    # near-silent bins, where the log amplifies it).
    np.testing.assert_allclose(features, reference, atol=2e-2, rtol=0)
    assert np.abs(features - reference).mean() < 1e-4


def test_fbank_matches_float64_kaldi_reference():
    import torchaudio.compliance.kaldi as kaldi

    waveform = noise(5000, seed=3)
    reference = kaldi.fbank(
        torch.from_numpy(waveform.astype(np.float64) * 32768)[None],
        num_mel_bins=80, frame_length=25.0, frame_shift=10.0, dither=0.0, sample_frequency=16000.0,
    ).float().numpy()
    np.testing.assert_array_equal(audio.extract_fbank(waveform), reference)


@pytest.mark.parametrize("num_samples", [0, 1, 399, 400, 559, 560, 561, 16000, 16001])
def test_fbank_frame_count(num_samples):
    features = audio.extract_fbank(noise(num_samples), 16000)
    assert features.shape == (audio.num_frames(num_samples), 80)
    expected = 0 if num_samples < 400 else 1 + (num_samples - 400) // 160
    assert features.shape[0] == expected


def test_fbank_accepts_tensor_and_list():
    waveform = noise(3000, seed=1)
    expected = audio.extract_fbank(waveform)
    np.testing.assert_array_equal(audio.extract_fbank(torch.from_numpy(waveform)), expected)
    np.testing.assert_array_equal(audio.extract_fbank(waveform.tolist()), expected)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_fbank_wrong_rate_names_rate(rate):
    with pytest.raises(ValueError, match=str(rate)):
        audio.extract_fbank(noise(1000), rate)


def test_fbank_rejects_integer_samples():
    with pytest.raises(ValueError, match="int16"):
        audio.extract_fbank((noise(1000) * 32767).astype(np.int16))


def test_fbank_rejects_16bit_scale_floats():
    with pytest.raises(ValueError, match="32768"):
        audio.extract_fbank(noise(1000) * 32768)


def test_fbank_rejects_samples_by_channels():
    with pytest.raises(ValueError, match="transpose"):
        audio.extract_fbank(noise(1000, channels=2).T)


def test_fbank_rejects_nan():
    waveform = noise(1000)
    waveform[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        audio.extract_fbank(waveform)


def test_fbank_stereo_is_channel_mean():
    stereo = noise(4000, seed=2, channels=2)
    expected = audio.extract_fbank(stereo.astype(np.float64).mean(axis=0))
    np.testing.assert_array_equal(audio.extract_fbank(stereo), expected)


# ---------------------------------------------------------------------------
# OnlineFbank
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("piece_ms", [40, 320, 1000])
def test_online_equals_offline_real_speech(jfk, piece_ms):
    offline = audio.extract_fbank(jfk)
    online = stream(audio.OnlineFbank(), jfk, [piece_ms * 16])
    np.testing.assert_array_equal(online, offline)


@pytest.mark.parametrize(
    "piece_sizes",
    [[1], [401], [159, 161], [7, 1000, 3, 400, 160], [640, 5120, 16000], [100000]],
    ids=["1", "401", "159-161", "mixed", "40-320-1000ms", "whole"],
)
@pytest.mark.parametrize("num_samples", [399, 400, 4321, 12345])
def test_online_equals_offline_odd_pieces(piece_sizes, num_samples):
    if piece_sizes == [1] and num_samples > 5000:
        pytest.skip("one-sample pieces are covered by the shorter inputs")
    waveform = noise(num_samples, seed=num_samples)
    extractor = audio.OnlineFbank()
    online = stream(extractor, waveform, piece_sizes)
    np.testing.assert_array_equal(online, audio.extract_fbank(waveform))
    assert extractor.frames_emitted == audio.num_frames(num_samples)
    assert extractor.samples_accepted == num_samples
    assert extractor.pending.shape[0] < audio.WINDOW_SAMPLES


def test_online_random_split_points():
    rng = np.random.default_rng(7)
    waveform = noise(30000, seed=7)
    cuts = np.sort(rng.choice(np.arange(1, 30000), size=40, replace=False))
    extractor = audio.OnlineFbank()
    pieces = np.split(waveform, cuts)
    online = np.concatenate([extractor.accept(piece) for piece in pieces])
    np.testing.assert_array_equal(online, audio.extract_fbank(waveform))


def test_online_returns_only_new_frames():
    extractor = audio.OnlineFbank()
    assert extractor.accept(noise(399)).shape == (0, 80)
    assert extractor.accept(noise(1, seed=1)).shape == (1, 80)
    assert extractor.accept(noise(159, seed=2)).shape == (0, 80)
    assert extractor.accept(noise(1, seed=3)).shape == (1, 80)
    assert extractor.accept(np.zeros(0, np.float32)).shape == (0, 80)


def test_online_stereo_equals_offline():
    stereo = noise(9000, seed=4, channels=2)
    online = stream(audio.OnlineFbank(), stereo, [333, 1600])
    np.testing.assert_array_equal(online, audio.extract_fbank(stereo))


def test_online_channel_change_rejected():
    extractor = audio.OnlineFbank()
    extractor.accept(noise(500, channels=2))
    with pytest.raises(ValueError, match="1 channel"):
        extractor.accept(noise(500))


def test_online_reset_starts_new_utterance():
    first, second = noise(5000, seed=5), noise(3000, seed=6)
    extractor = audio.OnlineFbank()
    stream(extractor, first, [700])
    extractor.reset()
    assert extractor.frames_emitted == 0
    assert extractor.pending.size == 0
    np.testing.assert_array_equal(stream(extractor, second, [700]), audio.extract_fbank(second))


def test_online_wrong_rate_names_rate():
    with pytest.raises(ValueError, match="22050"):
        audio.OnlineFbank(sample_rate=22050)
    extractor = audio.OnlineFbank()
    with pytest.raises(ValueError, match="8000"):
        extractor.accept(noise(100), sample_rate=8000)


# ---------------------------------------------------------------------------
# Global CMVN
# ---------------------------------------------------------------------------


def test_global_cmvn_matches_fairseq(tmp_path):
    from fairseq.data.audio.feature_transforms.global_cmvn import GlobalCMVN as FairseqGlobalCMVN

    rng = np.random.default_rng(0)
    mean = rng.standard_normal(80).astype(np.float32)
    std = (rng.random(80) + 0.5).astype(np.float32)
    path = tmp_path / "gcmvn.npz"
    np.savez(path, mean=mean, std=std)
    features = audio.extract_fbank(noise(4000))
    ours = audio.GlobalCMVN.load(path)(features)
    theirs = FairseqGlobalCMVN(str(path))(features)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_global_cmvn_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        audio.GlobalCMVN.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(80))
    with pytest.raises(ValueError, match="std"):
        audio.GlobalCMVN.load(tmp_path / "bad.npz")
    cmvn = audio.GlobalCMVN(mean=np.zeros(80, np.float32), std=np.ones(80, np.float32))
    with pytest.raises(ValueError, match="80"):
        cmvn(np.zeros((5, 40), np.float32))


# ---------------------------------------------------------------------------
# Reading and converting audio
# ---------------------------------------------------------------------------


def test_read_wav_segment_cuts_samples(tmp_path):
    samples = noise(16000, seed=8)
    path = tmp_path / "a.wav"
    soundfile.write(str(path), samples, 16000, subtype="FLOAT")
    segment, rate = audio.read_wav_segment(path, offset_s=0.25, duration_s=0.5)
    assert rate == 16000
    assert segment.shape == (1, 8000)
    np.testing.assert_array_equal(segment[0], samples[4000:12000])
    whole, _ = audio.read_wav_segment(path)
    assert whole.shape == (1, 16000)


def test_read_wav_segment_past_end(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(str(path), noise(16000), 16000)
    with pytest.raises(ValueError, match="outside"):
        audio.read_wav_segment(path, offset_s=0.9, duration_s=0.2)
    with pytest.raises(FileNotFoundError, match="b.wav"):
        audio.read_wav_segment(tmp_path / "b.wav", 0.0, 0.1)


def test_to_16k_mono_converts_with_warning(tmp_path, caplog):
    stereo = noise(44100, seed=9, channels=2)
    with caplog.at_level(logging.WARNING, logger="leap_fairseq.audio"):
        mono = audio.to_16k_mono(stereo, 44100, source="talk.wav")
    assert mono.dtype == np.float32
    assert mono.ndim == 1
    assert mono.shape[0] == audio.converted_length(44100, 44100) == 16000
    assert any("talk.wav" in record.message and "44100" in record.message for record in caplog.records)


def test_to_16k_mono_passthrough_is_silent(caplog):
    samples = noise(1000)
    with caplog.at_level(logging.WARNING, logger="leap_fairseq.audio"):
        result = audio.to_16k_mono(samples, 16000)
    np.testing.assert_array_equal(result, samples)
    assert not caplog.records


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("num_samples", [1, 999, 12345])
def test_converted_length_matches_resampler(rate, num_samples):
    converted = audio.to_16k_mono(np.zeros(num_samples, np.float32), rate, warn=False)
    assert converted.shape[0] == audio.converted_length(num_samples, rate)


def test_load_audio_16k_mono_stereo_file(tmp_path):
    stereo = noise(48000, seed=10, channels=2)
    path = tmp_path / "s.wav"
    soundfile.write(str(path), stereo.T, 48000, subtype="FLOAT")
    loaded = audio.load_audio_16k_mono(path, offset_s=0.5, duration_s=0.25, warn=False)
    expected = audio.to_16k_mono(stereo[:, 24000:36000], 48000, warn=False)
    np.testing.assert_array_equal(loaded, expected)


# ---------------------------------------------------------------------------
# Minimum segment length
# ---------------------------------------------------------------------------


def test_min_frames_fits_two_unpadded_convolutions():
    assert audio.MIN_FRAMES == 13
    weight = torch.ones(1, 1, audio.SUBSAMPLING_KERNEL_SIZE)

    def output_length(frames):
        x = torch.zeros(1, 1, frames)
        for _ in range(audio.SUBSAMPLING_LAYERS):
            if x.shape[-1] < audio.SUBSAMPLING_KERNEL_SIZE:
                return 0
            x = torch.nn.functional.conv1d(x, weight, stride=audio.SUBSAMPLING_STRIDE)
        return x.shape[-1]

    assert output_length(audio.MIN_FRAMES) == 1
    assert output_length(audio.MIN_FRAMES - 1) == 0
