"""Workarounds for the software stack leap_fairseq runs on, all in one place.

Each patch is applied only where its failure is present, can be applied any
number of times, and its docstring describes what breaks, in which versions, and why the
patch is safe. :func:`apply_all` runs them in dependency order; importing
``leap_fairseq`` calls it before anything imports fairseq's model code.

Troubles that need no code (pytest-flake8 under pytest 9, the small last batch
that ``batch_by_size`` drops) are described in the README's troubleshooting
section.
"""

import contextlib
import importlib
import logging
import sys
import types

logger = logging.getLogger(__name__)

_TORCHAUDIO_EXTENSION = "torchaudio._extension"


# ---------------------------------------------------------------------------
# torchaudio's C extension
# ---------------------------------------------------------------------------


def _torchaudio_extension_stub() -> types.ModuleType:
    """Build a stand-in for ``torchaudio._extension`` that reports no extension.

    torchaudio's Python code checks ``_IS_TORCHAUDIO_EXT_AVAILABLE`` and
    ``_IS_ALIGN_AVAILABLE`` before it touches a compiled operator, so with both
    False the pure-Python parts (``compliance.kaldi``, ``functional``) work and
    the compiled ones raise their own "not available" errors.
    """
    stub = types.ModuleType(_TORCHAUDIO_EXTENSION)
    stub.__doc__ = "Stand-in installed by leap_fairseq.compat: the C extension failed to load."
    stub._IS_TORCHAUDIO_EXT_AVAILABLE = False
    stub._IS_ALIGN_AVAILABLE = False
    stub.LEAP_STUB = True

    def _check_cuda_version():
        return None

    def fail_if_no_align(func):
        def wrapped(*args, **kwargs):
            raise RuntimeError(
                f"{func.__name__} needs torchaudio's C extension, which could not be "
                "loaded beside this torch build."
            )

        return wrapped

    stub._check_cuda_version = _check_cuda_version
    stub.fail_if_no_align = fail_if_no_align
    stub.__all__ = ["_check_cuda_version", "_IS_TORCHAUDIO_EXT_AVAILABLE"]
    return stub


def patch_torchaudio_extension() -> bool:
    """Make ``import torchaudio`` work when its C extension cannot load.

    What breaks: torchaudio 2.9 to 2.11 wheels are built against CUDA torch.
    Beside a CPU-only torch (for example torch 2.13.0+cpu), loading
    ``torchaudio/lib/_torchaudio.so`` fails with ``libc10_cuda.so`` missing, and
    ``import torchaudio`` raises ``OSError``. fairseq imports torchaudio at
    module level in its speech code, so fairseq's speech tasks fail to import.

    The patch: if importing torchaudio raises ``OSError``, drop the partly
    imported torchaudio modules, put a stub in place of
    ``torchaudio._extension`` (see :func:`_torchaudio_extension_stub`) and
    import torchaudio again.

    Why it is safe: only the extension loading is replaced, and only after it
    has failed. Where the extension loads (CUDA torch, or a matching CPU
    build), nothing changes. leap_fairseq uses only
    ``torchaudio.compliance.kaldi.fbank`` and ``torchaudio.functional``, which
    are pure Python on top of torch.

    Returns True when the stub is in use.
    """
    current = sys.modules.get(_TORCHAUDIO_EXTENSION)
    if current is not None and getattr(current, "LEAP_STUB", False):
        return True
    try:
        importlib.import_module("torchaudio")
        return False
    except OSError as error:
        logger.info("torchaudio's C extension failed to load (%s); using the Python-only parts", error)

    for name in [name for name in sys.modules if name == "torchaudio" or name.startswith("torchaudio.")]:
        del sys.modules[name]
    sys.modules[_TORCHAUDIO_EXTENSION] = _torchaudio_extension_stub()
    importlib.import_module("torchaudio")
    return True


# ---------------------------------------------------------------------------
# torch.load's weights_only default
# ---------------------------------------------------------------------------


class _TorchWithFullLoad(types.ModuleType):
    """The ``torch`` module as fairseq's checkpoint code should see it.

    Every attribute comes from the real ``torch`` except ``load``, whose
    ``weights_only`` defaults to False.
    """

    LEAP_PATCHED = True

    def __init__(self, torch_module):
        super().__init__(torch_module.__name__)
        self._torch = torch_module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def load(self, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return self._torch.load(*args, **kwargs)


# Modules of fairseq that load fairseq's own files (checkpoints, and the
# pickled objects that distributed training sends between workers).
_FAIRSEQ_LOADERS = ("fairseq.checkpoint_utils", "fairseq.distributed.utils")


def patch_checkpoint_loading() -> bool:
    """Let fairseq load its own checkpoints under torch >= 2.6.

    What breaks: torch 2.6 changed ``torch.load``'s default to
    ``weights_only=True``, which refuses pickled Python objects. fairseq
    checkpoints store ``argparse.Namespace`` (``args``) and other objects, so
    ``fairseq-train`` cannot resume, and ``fairseq-generate``,
    ``fairseq-eval-lm`` and checkpoint loading in SimulEval fail with
    ``UnpicklingError: Weights only load failed``. ``fairseq.distributed.utils``
    unpickles the objects workers exchange in the same way.

    The patch: in those two fairseq modules only, the name ``torch`` is bound
    to a proxy whose ``load`` defaults to ``weights_only=False`` (an explicit
    argument still wins). ``torch.load`` itself is unchanged for all other code.

    Why it is safe: these modules load checkpoints the user points fairseq at,
    which is what fairseq did before torch 2.6. As with any pickle, only load
    checkpoints from sources you trust.

    Returns True when a module was patched or already patched.
    """
    import torch

    patched = False
    for module_name in _FAIRSEQ_LOADERS:
        module = importlib.import_module(module_name)
        if getattr(module.torch, "LEAP_PATCHED", False):
            patched = True
            continue
        if "weights_only" not in _load_signature(torch):
            continue
        module.torch = _TorchWithFullLoad(torch)
        patched = True
    return patched


def _load_signature(torch_module):
    import inspect

    return inspect.signature(torch_module.load).parameters


# ---------------------------------------------------------------------------
# fairseq's convert_waveform and the removed torchaudio.sox_effects
# ---------------------------------------------------------------------------


def convert_waveform(waveform, sample_rate, normalize_volume=False, to_mono=False, to_sample_rate=None):
    """Convert a (channels, samples) waveform with torch only.

    A replacement for ``fairseq.data.audio.audio_utils.convert_waveform`` with
    its arguments and return value: peak normalisation (SoX ``gain -n``),
    resampling with ``torchaudio.functional.resample`` (band-limited sinc
    interpolation), and a mono mix that averages the channels (SoX
    ``channels 1``). The steps run in SoX's order: gain, rate, channels.

    Returns:
        (waveform, sample_rate): a numpy array for numpy input, else a tensor,
        shaped (channels, samples).
    """
    import numpy as np
    import torch
    import torchaudio.functional

    is_numpy = isinstance(waveform, np.ndarray)
    converted = torch.from_numpy(waveform) if is_numpy else waveform
    if converted.dim() != 2:
        raise ValueError(f"convert_waveform expects a (channels, samples) waveform, got shape {tuple(converted.shape)}")
    output_rate = sample_rate
    if normalize_volume:
        peak = converted.abs().max()
        if peak > 0:
            converted = converted / peak
    if to_sample_rate is not None and to_sample_rate != sample_rate:
        original_dtype = converted.dtype
        converted = torchaudio.functional.resample(converted.to(torch.float32), sample_rate, to_sample_rate)
        converted = converted.to(original_dtype) if original_dtype.is_floating_point else converted
        output_rate = to_sample_rate
    if to_mono and converted.shape[0] > 1:
        converted = converted.mean(dim=0, keepdim=True)
    if is_numpy:
        converted = converted.numpy()
    return converted, output_rate


convert_waveform.LEAP_PATCHED = True


def _sox_effects_available() -> bool:
    try:
        importlib.import_module("torchaudio.sox_effects")
    except (ImportError, OSError):
        return False
    return True


def patch_convert_waveform() -> bool:
    """Give fairseq a ``convert_waveform`` that does not need SoX.

    What breaks: ``fairseq.data.audio.audio_utils.convert_waveform`` (used by
    ``get_waveform`` to resample or mix down audio, and by fairseq's speech
    data preparation) imports ``torchaudio.sox_effects``, which torchaudio 2.9
    removed. Any wav that is not already mono at the requested rate then fails
    with ``ImportError: Please install torchaudio``.

    The patch: when ``torchaudio.sox_effects`` cannot be imported, replace the
    function in ``fairseq.data.audio.audio_utils`` with :func:`convert_waveform`.
    ``get_waveform`` looks the name up in that module, so it uses the
    replacement.

    Why it is safe: it takes the same arguments and returns the same shapes.
    The resampler differs from SoX's in filter design, so resampled samples
    agree with SoX's only to within a small error. Where SoX effects exist,
    nothing changes.

    Returns True when the replacement is in use.
    """
    audio_utils = importlib.import_module("fairseq.data.audio.audio_utils")
    if getattr(audio_utils.convert_waveform, "LEAP_PATCHED", False):
        return True
    if _sox_effects_available():
        return False
    audio_utils.convert_waveform = convert_waveform
    return True


# ---------------------------------------------------------------------------
# Relative paths in speech_to_text data configs
# ---------------------------------------------------------------------------


def _resolve_against_config(data_config, value):
    """Return ``value`` joined to the config's folder when it is relative and exists there."""
    from pathlib import Path

    if not value or Path(value).is_absolute():
        return value
    candidate = Path(data_config.root) / value
    return candidate.as_posix() if candidate.exists() else value


def patch_speech_data_paths() -> bool:
    """Resolve ``audio_root`` and the global CMVN file against the data config's folder.

    What breaks: fairseq 0.12.3's ``S2TDataConfig`` finds a relative
    ``vocab_filename`` and ``sentencepiece_model`` next to ``config_*.yaml``,
    but takes ``audio_root`` and ``global_cmvn.stats_npz_path`` relative to
    the working directory. A prepared data folder with absolute paths stops
    working when it is moved, and one with relative paths works only from one
    working directory.

    The patch: a relative ``audio_root`` (``.`` included) or
    ``stats_npz_path`` that exists relative to the config's folder is resolved
    against that folder. Absolute paths, empty ``audio_root`` and relative
    paths that exist only relative to the working directory keep fairseq's
    meaning.

    Why it is safe: it changes only relative paths that name something inside
    the data folder, which is where fairseq's own recipes and leap_fairseq's
    data preparation put these files.

    Returns True when the patch is in use.
    """
    data_cfg = importlib.import_module("fairseq.data.audio.data_cfg")
    config_class = data_cfg.S2TDataConfig
    if getattr(config_class, "LEAP_PATCHED_PATHS", False):
        return True

    original_audio_root = config_class.audio_root.fget
    original_feature_transforms = config_class.get_feature_transforms

    def audio_root(self):
        return _resolve_against_config(self, original_audio_root(self))

    def get_feature_transforms(self, split, is_train):
        config = original_feature_transforms(self, split, is_train)
        cmvn = config.get("global_cmvn")
        if isinstance(cmvn, dict) and cmvn.get("stats_npz_path"):
            cmvn["stats_npz_path"] = _resolve_against_config(self, cmvn["stats_npz_path"])
        return config

    config_class.audio_root = property(audio_root, doc=config_class.audio_root.__doc__)
    config_class.get_feature_transforms = get_feature_transforms
    config_class.LEAP_PATCHED_PATHS = True
    return True


# ---------------------------------------------------------------------------
# numpy.compat, removed in numpy 2
# ---------------------------------------------------------------------------


def patch_numpy_compat() -> bool:
    """Give fairseq the ``numpy.compat.long`` alias that numpy 2.0 removed.

    What breaks: fairseq 0.12.3 reads ``np.compat.long`` in
    ``TokenBlockDataset`` (``--sample-break-mode eos``, which
    ``fairseq-interactive --task language_modeling`` always uses for its input)
    and in ``LanguagePairDataset.filter_indices_by_size``. Under numpy 2 they
    raise ``AttributeError: module 'numpy' has no attribute 'compat'``.

    The patch: when ``numpy.compat`` is missing, set it to a namespace whose
    ``long`` is ``int``, the value ``numpy.compat.long`` had in numpy 1.x.

    Why it is safe: it only adds a missing attribute; under numpy 1.x nothing
    changes.

    Returns True when the alias is in use.
    """
    import numpy

    existing = getattr(numpy, "compat", None)
    if existing is not None:
        return getattr(existing, "LEAP_PATCHED", False)
    numpy.compat = types.SimpleNamespace(long=int, LEAP_PATCHED=True)
    return True


# ---------------------------------------------------------------------------
# fairseq's logging set-up at import time
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def keep_root_logging():
    """Undo the root-logger set-up that importing fairseq performs, when fairseq is first imported here.

    What breaks: fairseq 0.12.3's ``fairseq.tasks.text_to_speech`` and
    ``frm_text_to_speech`` call ``logging.basicConfig`` at import time and
    ``fairseq.models.wav2vec.wav2vec2_classification`` sets the root level to
    DEBUG, so ``import leap_fairseq`` in a user's script turns on DEBUG
    logging of every library.

    The patch: when fairseq was not imported before this block, the root
    logger's level and handlers are restored afterwards. Where fairseq was
    already imported (``fairseq-train`` and the other fairseq commands, which
    configure logging themselves), nothing changes.
    """
    root = logging.getLogger()
    fairseq_imported_before = "fairseq" in sys.modules
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        if not fairseq_imported_before:
            root.setLevel(level)
            root.handlers[:] = handlers


def apply_all() -> dict:
    """Apply every patch that this environment needs.

    Returns a mapping from patch name to whether it is in use.
    """
    return {
        "torchaudio_extension": patch_torchaudio_extension(),
        "checkpoint_loading": patch_checkpoint_loading(),
        "convert_waveform": patch_convert_waveform(),
        "speech_data_paths": patch_speech_data_paths(),
        "numpy_compat": patch_numpy_compat(),
    }
