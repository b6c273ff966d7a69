"""Filterbank extraction for the MuST-C preparation: per-segment cache, worker processes, ZIP, CMVN.

Each segment's features go to ``<cache>/<id>.npy`` (renamed into place when
complete), and evaluation segments also get a 16 kHz mono wav for SimulEval.
A rerun skips every segment whose files exist and are complete, so an
interrupted preparation resumes where it stopped. The final ``fbank80.zip`` is
assembled from the cache in manifest order.
"""

import io
import logging
import os
import signal
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from data_prep import mustc_files
from leap_fairseq import audio

logger = logging.getLogger(__name__)

# Testing hook: after this many segments are finished, the preparation kills
# itself with SIGKILL, which is how the tests interrupt a run at a known point.
KILL_AFTER_ENV = "LEAP_PREP_MUSTC_KILL_AFTER"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class SegmentJob:
    """Location of one segment's audio and the files to write for it.

    Attributes:
        id: segment id (the cache and wav file stem).
        start, num_samples: first sample and count at the file's own rate.
        num_samples_16k, n_frames: the expected sizes after conversion, checked.
        cache_path: the .npy file for the features.
        eval_wav_path: the 16 kHz mono wav for SimulEval, or None for training segments.
    """

    id: str
    start: int
    num_samples: int
    num_samples_16k: int
    n_frames: int
    cache_path: str
    eval_wav_path: Optional[str]


@dataclass(frozen=True)
class TalkJob:
    """All segments to extract from one audio file."""

    wav_path: str
    sample_rate: int
    channels: int
    subtype: str
    segments: Tuple[SegmentJob, ...]


def cached_features_complete(path: Path, n_frames: int) -> bool:
    """Return whether ``path`` is a complete float32 (n_frames, 80) .npy file."""
    if not path.is_file():
        return False
    try:
        shape, dtype, complete = mustc_files.npy_shape(path)
    except (OSError, ValueError):
        return False
    return complete and shape == (n_frames, audio.NUM_MEL_BINS) and dtype == np.dtype("<f4")


def _eval_wav_subtype(job: TalkJob) -> str:
    """Keep the source's sample format when no conversion happens, else write 32-bit float."""
    import soundfile

    converted = job.sample_rate != audio.SAMPLE_RATE or job.channels != 1
    if not converted and job.subtype and soundfile.check_format("WAV", job.subtype):
        return job.subtype
    return "FLOAT"


def process_talk(job: TalkJob) -> Tuple[str, int, int]:
    """Extract and store the features (and evaluation wavs) of one talk's missing segments.

    Returns:
        (wav path, segments handled, segments whose features were computed in this call).
    """
    import soundfile

    pending = []
    for segment in job.segments:
        need_features = not cached_features_complete(Path(segment.cache_path), segment.n_frames)
        need_wav = segment.eval_wav_path is not None and not Path(segment.eval_wav_path).is_file()
        if need_features or need_wav:
            pending.append((segment, need_features, need_wav))
    if not pending:
        return job.wav_path, len(job.segments), 0

    subtype = _eval_wav_subtype(job)
    with soundfile.SoundFile(job.wav_path) as source:
        for segment, need_features, need_wav in pending:
            try:
                source.seek(segment.start)
                data = source.read(segment.num_samples, dtype="float32", always_2d=True)
                samples = audio.to_16k_mono(data.T, job.sample_rate, source=job.wav_path, warn=False)
                if samples.shape[0] != segment.num_samples_16k:
                    raise RuntimeError(f"read {samples.shape[0]} samples, expected {segment.num_samples_16k}")
                if need_features:
                    features = audio.extract_fbank(samples, audio.SAMPLE_RATE)
                    if features.shape[0] != segment.n_frames:
                        raise RuntimeError(f"got {features.shape[0]} frames, expected {segment.n_frames}")
                    mustc_files.write_bytes_atomic(
                        Path(segment.cache_path), mustc_files.npy_bytes(features), sync=False
                    )
                if need_wav:
                    with mustc_files.atomic_output(Path(segment.eval_wav_path), sync=False) as temporary:
                        soundfile.write(str(temporary), samples, audio.SAMPLE_RATE, subtype=subtype, format="WAV")
            except Exception as error:
                raise RuntimeError(
                    f"feature extraction failed for segment {segment.id} of {job.wav_path} "
                    f"(samples {segment.start} to {segment.start + segment.num_samples}): {error}"
                ) from error
    return job.wav_path, len(job.segments), sum(1 for _, need_features, _ in pending if need_features)


def _init_worker() -> None:
    import torch

    # One thread per process: --jobs sets the parallelism, and a fixed thread
    # count keeps the floating-point results independent of it.
    torch.set_num_threads(1)
    # Linux only: die with the parent, so that a killed preparation leaves no
    # worker writing into the cache while the next run starts.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _kill_after() -> Optional[int]:
    value = os.environ.get(KILL_AFTER_ENV)
    return int(value) if value else None


def extract_all(talk_jobs: Sequence[TalkJob], num_workers: int, description: str) -> Tuple[int, int]:
    """Run :func:`process_talk` over all talks with ``num_workers`` processes.

    Returns:
        (segments handled, segments whose features were computed; the others' came from the cache).
    """
    total = sum(len(job.segments) for job in talk_jobs)
    kill_after = _kill_after()
    handled = computed = 0
    # Longest talks first, so that no worker starts a long talk at the end.
    ordered = sorted(talk_jobs, key=lambda job: -sum(segment.num_samples for segment in job.segments))
    with tqdm(total=total, desc=description, unit="seg", dynamic_ncols=True) as progress:
        for _, talk_handled, talk_computed in _map_jobs(ordered, num_workers):
            handled += talk_handled
            computed += talk_computed
            progress.update(talk_handled)
            if kill_after is not None and handled >= kill_after:
                logger.warning("%s=%d: killing the preparation after %d segments", KILL_AFTER_ENV, kill_after, handled)
                os.kill(os.getpid(), signal.SIGKILL)
    return handled, computed


def _map_jobs(jobs: Sequence[TalkJob], num_workers: int) -> Iterable[Tuple[str, int, int]]:
    if num_workers <= 1 or len(jobs) <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                yield process_talk(job)
        finally:
            torch.set_num_threads(threads)
        return
    # fork reuses the parent's imported modules (importing fairseq takes
    # seconds); the parent has run no torch operation before this point.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with get_context(method).Pool(min(num_workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(process_talk, jobs, chunksize=1)


def assemble_zip(zip_path: Path, ids: Sequence[str], cache_dir: Path) -> None:
    """Write ``fbank80.zip`` with one ``<id>.npy`` entry per id, in the given order."""
    members = [(f"{segment_id}.npy", cache_dir / f"{segment_id}.npy") for segment_id in ids]
    with tqdm(total=len(members), desc=f"packing {zip_path.name}", unit="seg", dynamic_ncols=True) as progress:
        mustc_files.write_stored_zip(zip_path, members, progress=progress)


def feature_locations(zip_path: Path, ids: Iterable[str]) -> Dict[str, Tuple[int, int, int]]:
    """Map each id to (byte offset, byte length, frames) of its features in the ZIP.

    Raises:
        RuntimeError: an id is missing from the ZIP (it was built from other inputs).
    """
    index = mustc_files.stored_zip_index(zip_path)
    locations = {}
    with open(zip_path, "rb") as handle:
        for segment_id in ids:
            entry = index.get(f"{segment_id}.npy")
            if entry is None:
                raise RuntimeError(f"{zip_path} has no entry {segment_id}.npy; rerun with --overwrite")
            offset, length = entry
            handle.seek(offset)
            shape = _npy_header_shape(handle.read(min(length, 4096)))
            locations[segment_id] = (offset, length, shape[0])
    return locations


def _npy_header_shape(data: bytes) -> Tuple[int, ...]:
    reader = io.BytesIO(data)
    version = np.lib.format.read_magic(reader)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(reader)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(reader)
    return tuple(shape)


def load_features(zip_path: Path, offset: int, length: int) -> np.ndarray:
    """Read one feature matrix from the ZIP, as fairseq does."""
    with open(zip_path, "rb") as handle:
        handle.seek(offset)
        return np.load(io.BytesIO(handle.read(length)))


def global_cmvn_stats(zip_path: Path, locations: Sequence[Tuple[int, int, int]]) -> Dict[str, np.ndarray]:
    """Compute per-bin mean and standard deviation over the given feature matrices.

    Sums run in float64 over all frames, in the given order. As in fairseq's
    ``cal_gcmvn_stats``, the variance is E[x^2] - E[x]^2 floored at 1e-8
    (std >= 1e-4), and both arrays are float32.
    """
    total = np.zeros(audio.NUM_MEL_BINS, dtype=np.float64)
    total_squares = np.zeros(audio.NUM_MEL_BINS, dtype=np.float64)
    count = 0
    for offset, length, _ in tqdm(locations, desc="global CMVN", unit="seg", dynamic_ncols=True):
        features = load_features(zip_path, offset, length).astype(np.float64)
        total += features.sum(axis=0)
        total_squares += np.square(features).sum(axis=0)
        count += features.shape[0]
    if count == 0:
        raise RuntimeError("no training features to compute the global CMVN statistics from")
    mean = total / count
    variance = total_squares / count - np.square(mean)
    std = np.sqrt(np.maximum(variance, 1e-8))
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
