"""File writing for the MuST-C preparation: atomic renames, reproducible ZIP and NPZ files, TSV manifests.

Every output goes to a temporary name in its final folder first and is renamed
into place when complete. A killed run therefore leaves the old file, the
complete new file, or a temporary file that the next run deletes. ZIP entries
carry a fixed time stamp, so the same input gives byte-identical archives.
"""

import contextlib
import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

TEMPORARY_MARKER = ".tmp-"
# The earliest time a ZIP header can store; used for every entry.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_LOCAL_HEADER_SIZE = 30


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Raises BlockingIOError at once when another process holds the lock. The
    operating system releases the lock when the holder exits, killed or not.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def temporary_path(path: Path) -> Path:
    """Return the name under which ``path`` is written before the rename."""
    return path.with_name(f".{path.name}{TEMPORARY_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: Path, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write, then rename it to ``path``; on error, delete it.

    ``sync`` flushes the file to disk before the rename, so that a crash of
    the machine cannot leave a renamed but truncated file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        if sync:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    with atomic_output(path, sync=sync) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def remove_temporaries(folder: Path) -> List[Path]:
    """Delete the temporary files that a killed run left under ``folder``; return their paths."""
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(f".*{TEMPORARY_MARKER}*"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise an array in the .npy format, as ``np.save`` writes it."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_shape(path: Path) -> Tuple[Tuple[int, ...], np.dtype, bool]:
    """Return (shape, dtype, complete) of a .npy file, complete when its size matches the header."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        data_start = handle.tell()
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    return tuple(shape), dtype, path.stat().st_size == expected and not fortran_order


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def write_npz_atomic(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Write arrays as an .npz file (readable by ``np.load``) with reproducible bytes.

    ``np.savez`` stamps the ZIP entries with the current time, so two runs
    would differ.
    """
    with atomic_output(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                archive.writestr(_zip_entry(f"{name}.npy"), npy_bytes(array))


def write_stored_zip(path: Path, members: Sequence[Tuple[str, Path]], progress=None) -> None:
    """Pack files into an uncompressed ZIP at ``path`` (atomically), in the given order.

    Args:
        members: (name inside the archive, file to copy) pairs.
        progress: optional tqdm bar, advanced once per member.
    """
    with atomic_output(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, source in members:
                archive.writestr(_zip_entry(name), source.read_bytes())
                if progress is not None:
                    progress.update(1)


def stored_zip_index(path: Path) -> Dict[str, Tuple[int, int]]:
    """Map each entry name of an uncompressed ZIP to (data offset, data length) in bytes.

    These are the numbers of fairseq's ``<zip>:<offset>:<length>`` audio
    paths. The offset comes from the entry's local header, whose name and
    extra fields may differ in length from the central directory's.
    """
    index = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: entry {info.filename} is compressed; fairseq needs a stored ZIP")
            raw.seek(info.header_offset)
            header = raw.read(_ZIP_LOCAL_HEADER_SIZE)
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_length + extra_length
            index[info.filename] = (offset, info.file_size)
    return index


def tsv_field(text: str) -> str:
    """Make text safe for a fairseq TSV manifest cell.

    fairseq reads manifests with ``csv.QUOTE_NONE`` and no escape character,
    so a cell is taken verbatim up to the next tab or line break. Tabs and line
    breaks inside the text become spaces; quotes and backslashes stay as they are.
    """
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_tsv_atomic(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(tsv_field(str(value)) for value in row))
    write_lines_atomic(path, lines)
