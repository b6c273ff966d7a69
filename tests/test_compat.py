"""Tests for leap_fairseq.compat: each failure reproduced without the patch, then fixed by it.

The reproductions run in a fresh interpreter that does not import leap_fairseq,
because the patches apply to the whole process once imported.
"""

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

import leap_fairseq
from leap_fairseq import compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def torchaudio_extension_loads() -> bool:
    result = run_python("import torchaudio")
    return result.returncode == 0


# --- torchaudio extension -------------------------------------------------


def test_torchaudio_import_fails_without_patch():
    if torchaudio_extension_loads():
        pytest.skip("torchaudio's C extension loads in this environment, so there is no failure to reproduce")
    result = run_python("import torchaudio")
    assert result.returncode != 0
    assert "OSError" in result.stderr


def test_torchaudio_import_works_after_patch():
    result = run_python(
        """
        import leap_fairseq
        import torch
        import torchaudio
        import torchaudio.functional
        from torchaudio.compliance import kaldi
        features = kaldi.fbank(torch.randn(1, 16000), num_mel_bins=80, sample_frequency=16000)
        print(tuple(features.shape))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("(98, 80)")


def test_torchaudio_patch_is_idempotent():
    first = compat.patch_torchaudio_extension()
    second = compat.patch_torchaudio_extension()
    assert first == second


def test_fbank_on_real_wav(shared_data):
    import torchaudio.compliance.kaldi as kaldi

    path = shared_data / "speech" / "real" / "jfk.wav"
    waveform, sample_rate = sf.read(path, dtype="float32", frames=16000, always_2d=True)
    assert sample_rate == 16000
    assert waveform.shape[0] == 16000
    tensor = torch.from_numpy(waveform.T.copy()) * 32768
    features = kaldi.fbank(tensor, num_mel_bins=80, sample_frequency=sample_rate, dither=0.0)
    assert features.shape == (98, 80)
    assert torch.isfinite(features).all()
    assert features.std() > 0.1


# --- checkpoint loading ----------------------------------------------------


@pytest.fixture()
def namespace_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"args": argparse.Namespace(arch="transformer_lm"), "model": {"w": torch.ones(2)}}, path)
    return path


def test_plain_torch_load_rejects_namespace(namespace_checkpoint):
    import pickle

    if "weights_only" not in compat._load_signature(torch):
        pytest.skip("this torch has no weights_only argument")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(namespace_checkpoint)


def test_fairseq_checkpoint_load_fails_without_patch(namespace_checkpoint):
    result = run_python(
        f"""
        import fairseq.checkpoint_utils as checkpoint_utils
        checkpoint_utils.torch.load({str(namespace_checkpoint)!r}, map_location="cpu")
        """
    )
    assert result.returncode != 0
    assert "Weights only load failed" in result.stderr


def test_fairseq_checkpoint_load_works_after_patch(namespace_checkpoint):
    import fairseq.checkpoint_utils as checkpoint_utils

    state = checkpoint_utils.torch.load(namespace_checkpoint, map_location="cpu")
    assert state["args"].arch == "transformer_lm"
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_checkpoint_patch_leaves_torch_load_alone(namespace_checkpoint):
    import pickle

    import fairseq.distributed.utils as distributed_utils

    assert compat.patch_checkpoint_loading()
    assert compat.patch_checkpoint_loading()
    assert getattr(distributed_utils.torch, "LEAP_PATCHED", False)
    assert torch.load is not distributed_utils.torch.load
    with pytest.raises(pickle.UnpicklingError):
        torch.load(namespace_checkpoint)


# --- convert_waveform --------------------------------------------------------


def stereo_sine(sample_rate: int, seconds: float = 0.5, frequency: float = 440.0) -> np.ndarray:
    time = np.arange(int(sample_rate * seconds)) / sample_rate
    left = 0.5 * np.sin(2 * np.pi * frequency * time)
    right = 0.25 * np.sin(2 * np.pi * frequency * time)
    return np.stack([left, right]).astype(np.float32)


def test_convert_waveform_fails_without_patch():
    result = run_python(
        """
        import numpy as np
        from fairseq.data.audio.audio_utils import convert_waveform
        convert_waveform(np.zeros((2, 8000), dtype=np.float32), 8000, to_mono=True, to_sample_rate=16000)
        """
    )
    if result.returncode == 0:
        pytest.skip("torchaudio.sox_effects exists here, so there is no failure to reproduce")
    assert "torchaudio" in result.stderr


def test_convert_waveform_after_patch():
    from fairseq.data.audio import audio_utils

    waveform = stereo_sine(8000)
    converted, rate = audio_utils.convert_waveform(waveform, 8000, to_mono=True, to_sample_rate=16000)
    assert rate == 16000
    assert isinstance(converted, np.ndarray)
    assert converted.shape == (1, 8000)
    # A 440 Hz sine survives resampling: compare away from the edges.
    time = np.arange(8000) / 16000
    expected = 0.375 * np.sin(2 * np.pi * 440 * time)
    np.testing.assert_allclose(converted[0, 200:-200], expected[200:-200], atol=2e-3)


def test_convert_waveform_normalizes_volume_for_tensors():
    from fairseq.data.audio import audio_utils

    waveform = torch.from_numpy(stereo_sine(16000))
    converted, rate = audio_utils.convert_waveform(waveform, 16000, normalize_volume=True)
    assert rate == 16000
    assert isinstance(converted, torch.Tensor)
    assert converted.shape == waveform.shape
    assert converted.abs().max().item() == pytest.approx(1.0, abs=1e-6)


def test_get_waveform_reads_stereo_file_as_mono(tmp_path):
    from fairseq.data.audio.audio_utils import get_waveform

    path = tmp_path / "stereo_8k.wav"
    sf.write(path, stereo_sine(8000).T, 8000)
    waveform, rate = get_waveform(str(path), mono=True, output_sample_rate=16000)
    assert rate == 16000
    assert waveform.shape == (1, 8000)


def test_apply_all_reports_every_patch():
    status = leap_fairseq._compat.apply_all()
    assert set(status) == {
        "torchaudio_extension", "checkpoint_loading", "convert_waveform", "speech_data_paths", "numpy_compat"
    }
    assert status["checkpoint_loading"]


# --- relative paths in speech_to_text data configs ---------------------------


@pytest.fixture()
def relative_data_config(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.savez(data_dir / "gcmvn.npz", mean=np.zeros(80, dtype=np.float32), std=np.ones(80, dtype=np.float32))
    config = data_dir / "config_st.yaml"
    config.write_text(
        "audio_root: .\n"
        "global_cmvn: {stats_npz_path: gcmvn.npz}\n"
        "transforms: {'*': [global_cmvn]}\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return config, elsewhere


READ_CONFIG = """
    import sys
    from pathlib import Path
    {setup}
    from fairseq.data.audio.data_cfg import S2TDataConfig
    from fairseq.data.audio.feature_transforms import CompositeAudioFeatureTransform
    config = S2TDataConfig(Path(sys.argv[1]))
    print(config.audio_root)
    CompositeAudioFeatureTransform.from_config_dict(config.get_feature_transforms("test", False))
    print("cmvn loaded")
"""


def read_config_from(config, cwd, setup):
    code = textwrap.dedent(READ_CONFIG).replace("{setup}", setup)
    return subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_relative_config_paths_fail_without_patch(relative_data_config):
    config, elsewhere = relative_data_config
    result = read_config_from(config, elsewhere, setup="")
    assert result.returncode != 0
    assert "gcmvn.npz" in result.stderr
    assert result.stdout.splitlines()[0] == "."


def test_relative_config_paths_resolve_after_patch(relative_data_config):
    config, elsewhere = relative_data_config
    result = read_config_from(config, elsewhere, setup="import leap_fairseq")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == config.parent.as_posix()
    assert lines[1] == "cmvn loaded"


def test_absolute_config_paths_unchanged(tmp_path):
    from pathlib import Path

    from fairseq.data.audio.data_cfg import S2TDataConfig

    config = tmp_path / "config.yaml"
    config.write_text(f"audio_root: {tmp_path.as_posix()}\n", encoding="utf-8")
    assert S2TDataConfig(Path(config)).audio_root == tmp_path.as_posix()
    config.write_text("audio_root: ''\n", encoding="utf-8")
    assert S2TDataConfig(Path(config)).audio_root == ""


# --- root logging -------------------------------------------------------------


def test_import_keeps_root_logging():
    result = run_python(
        """
        import logging
        import leap_fairseq
        root = logging.getLogger()
        print(logging.getLevelName(root.level), len(root.handlers))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["WARNING", "0"]


# --- numpy.compat -------------------------------------------------------------

TOKEN_BLOCKS_EOS = """
    {setup}
    import torch
    from fairseq.data import TokenBlockDataset
    from fairseq.data.list_dataset import ListDataset
    items = [torch.tensor([4, 5, 2]), torch.tensor([6, 2])]
    blocks = TokenBlockDataset(ListDataset(items, [3, 2]), [3, 2], block_size=None, pad=1, eos=2,
                               break_mode="eos")
    print(len(blocks))
"""


def test_token_blocks_fail_without_numpy_patch():
    import numpy

    if hasattr(numpy, "compat") and not getattr(numpy.compat, "LEAP_PATCHED", False):
        pytest.skip(f"numpy {numpy.__version__} still has numpy.compat, so there is no failure to reproduce")
    result = run_python(TOKEN_BLOCKS_EOS.replace("{setup}", ""))
    assert result.returncode != 0
    assert "compat" in result.stderr


def test_token_blocks_work_after_numpy_patch():
    result = run_python(TOKEN_BLOCKS_EOS.replace("{setup}", "import leap_fairseq"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2"
