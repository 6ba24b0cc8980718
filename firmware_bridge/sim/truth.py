"""The simulator's truth file, written as the plate runs: flat memory for sessions of any length.

Every block's samples go into fixed-size column buffers; a full buffer is appended to one raw
scratch file per column (in a hidden directory next to the truth file). :meth:`TruthWriter.close`
streams those files into the ``.npz`` (``numpy.load`` reads it, fields in docs/simulator.md) and
removes them. Memory is the buffers, whatever the session's length; the values and dtypes are
the ones the device computes, so the file holds the same numbers as one built in memory.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK_FIELDS", "SAMPLE_FIELDS", "TruthWriter"]

# per-sample columns and per-block columns, in the order they are written into the .npz
SAMPLE_FIELDS: dict[str, np.dtype[Any]] = {
    "t_s": np.dtype(np.float64),
    "accel_g": np.dtype(np.float64),
    "drive": np.dtype(np.float64),
    "freq_hz": np.dtype(np.float32),
    "sample_index": np.dtype(np.int64),
}
BLOCK_FIELDS: dict[str, np.dtype[Any]] = {
    "block_t_s": np.dtype(np.float64),
    "coil_temp_c": np.dtype(np.float64),
    "patient_mass_kg": np.dtype(np.float64),
}
CHUNK_SAMPLES = 1 << 15  # 32768 samples: about 1 MB of buffers in all
_COPY_BYTES = 1 << 20


class _Column:
    """One column: a buffer of ``capacity`` values flushed to a raw file when full."""

    def __init__(self, path: Path, dtype: np.dtype[Any], capacity: int) -> None:
        self.path = path
        self.dtype = dtype
        self.buffer: npt.NDArray[Any] = np.empty(capacity, dtype=dtype)
        self.fill = 0
        self.written = 0
        self._file: IO[bytes] = path.open("wb")

    @property
    def size(self) -> int:
        return self.written + self.fill

    def room(self) -> int:
        return self.buffer.size - self.fill

    def flush(self) -> None:
        if self.fill:
            self._file.write(self.buffer[: self.fill].tobytes())
            self.written += self.fill
            self.fill = 0

    def close(self) -> None:
        self.flush()
        self._file.close()


class TruthWriter:
    """Appends the truth of each block; :meth:`close` writes ``path`` (an ``.npz``)."""

    def __init__(self, path: Path, sample_rate_hz: float, chunk_samples: int = CHUNK_SAMPLES):
        self.path = path
        self.sample_rate_hz = float(sample_rate_hz)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        block_capacity = max(1, chunk_samples // 8)
        self._samples = {
            name: _Column(self._scratch / name, dtype, chunk_samples)
            for name, dtype in SAMPLE_FIELDS.items()
        }
        self._blocks = {
            name: _Column(self._scratch / name, dtype, block_capacity)
            for name, dtype in BLOCK_FIELDS.items()
        }
        self.events: list[str] = []
        self.constants: dict[str, float] = {}  # written as 0-d float64 arrays, e.g. the sensor's
        self._closed = False

    @property
    def samples(self) -> int:
        """Samples appended so far."""
        return self._samples["t_s"].size

    def sample_columns(self, n: int) -> dict[str, npt.NDArray[Any]]:
        """Writable views of the next ``n`` slots of every per-sample column.

        The caller fills all of them and then calls :meth:`commit_block`; the views are
        valid until then.
        """
        first = self._samples["t_s"]
        if n > first.buffer.size:
            raise ValueError(f"a block of {n} samples exceeds the chunk of {first.buffer.size}")
        if first.room() < n:
            for column in self._samples.values():
                column.flush()
        return {
            name: column.buffer[column.fill : column.fill + n]
            for name, column in self._samples.items()
        }

    def commit_block(self, n: int, block_t_s: float, coil_temp_c: float, mass_kg: float) -> None:
        """The ``n`` slots handed out by :meth:`sample_columns` are filled; add the block."""
        self.commit_blocks(n, [block_t_s], [(coil_temp_c, mass_kg)])

    def commit_blocks(
        self, n: int, block_t_s: list[float], plant: list[tuple[float, float]]
    ) -> None:
        """:meth:`commit_block` for ``len(block_t_s)`` blocks of ``n`` samples handed out by one
        :meth:`sample_columns` call (of ``n * len(block_t_s)`` slots); ``plant[j]`` is block
        j's (coil temperature C, mass on the plate kg)."""
        for column in self._samples.values():
            column.fill += n * len(block_t_s)
        for t_s, (coil_temp_c, mass_kg) in zip(block_t_s, plant, strict=True):
            for name, value in (
                ("block_t_s", t_s),
                ("coil_temp_c", coil_temp_c),
                ("patient_mass_kg", mass_kg),
            ):
                column = self._blocks[name]
                if not column.room():
                    column.flush()
                column.buffer[column.fill] = value
                column.fill += 1

    def close(self) -> None:
        """Write the ``.npz`` (streamed from the scratch files) and remove the scratch files."""
        if self._closed:
            return
        self._closed = True
        try:
            columns = {**self._samples, **self._blocks}
            for column in columns.values():
                column.close()
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, column in columns.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array_header_1_0(
                            out,
                            {
                                "descr": np.lib.format.dtype_to_descr(column.dtype),
                                "fortran_order": False,
                                "shape": (column.size,),
                            },
                        )
                        with column.path.open("rb") as raw:
                            shutil.copyfileobj(raw, out, _COPY_BYTES)
                for name, array in (
                    ("events", np.array(self.events, dtype=str)),
                    ("sample_rate_hz", np.array(self.sample_rate_hz)),
                    *((name, np.array(float(v))) for name, v in self.constants.items()),
                ):
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array(out, array, allow_pickle=False)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the scratch files without writing the ``.npz``."""
        self._closed = True
        for column in (*self._samples.values(), *self._blocks.values()):
            if not column._file.closed:
                column._file.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
