"""The values the device client hands out: what a plate announced and vouched for, its samples.

:class:`DeviceInfo` (the HELLO), :class:`DeviceIdentity` (IDENTITY) and :class:`Voucher` (a
checked COUNTERSIGNATURE) are plain frozen records. :class:`SampleBlock` is one SAMPLES block as
:meth:`~firmware_bridge.client.DeviceClient.read_block` returns it, :class:`SampleBatch` many
blocks of one length as arrays (:meth:`~firmware_bridge.client.DeviceClient.read_blocks`); one
of them is made for every read, so their ``__init__`` sets the fields as one dict. Nothing here
reads the port; import these from :mod:`firmware_bridge.client` as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.protocol import Capability, Hello

_set_attribute = object.__setattr__


@dataclass(frozen=True)
class DeviceInfo:
    """What the device announced in its hello."""

    device_id: str
    firmware_version: str
    protocol_version: str
    sample_rate_hz: int
    block_samples: int
    counts_per_g: int
    max_drive: float
    min_freq_hz: float
    max_freq_hz: float
    watchdog_s: float
    watchdog_ramp_s: float  # ramp to zero after a fault (watchdog or other)
    stop_ramp_s: float  # ramp to zero after SET_OUTPUT off
    full_scale_slew_s: float  # the drive never moves faster than full scale in this time
    ceiling_g: float  # the device ramps to zero above this peak acceleration, measured by itself
    capabilities: list[str]

    @classmethod
    def from_hello(cls, hello: Hello) -> DeviceInfo:
        return cls(
            device_id=hello.device_id,
            firmware_version=hello.firmware_version,
            protocol_version=f"{hello.protocol_major}.{hello.protocol_minor}",
            sample_rate_hz=hello.sample_rate_hz,
            block_samples=hello.block_samples,
            counts_per_g=hello.counts_per_g,
            max_drive=hello.max_drive,
            min_freq_hz=hello.min_freq_mhz / 1000.0,
            max_freq_hz=hello.max_freq_mhz / 1000.0,
            watchdog_s=hello.watchdog_ms / 1000.0,
            watchdog_ramp_s=hello.watchdog_ramp_ms / 1000.0,
            stop_ramp_s=hello.stop_ramp_ms / 1000.0,
            full_scale_slew_s=hello.slew_full_scale_ms / 1000.0,
            ceiling_g=hello.ceiling_g,
            capabilities=[c.name or "" for c in Capability if hello.capabilities & c],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceIdentity:
    """What the device's IDENTITY said: its key, and its counter and head at that moment."""

    device_id: str
    public_key: bytes
    counter: int
    head: bytes


@dataclass(frozen=True)
class Voucher:
    """A checked COUNTERSIGNATURE: the device vouched for ``digest`` as number ``counter``."""

    public_key: bytes
    counter: int
    digest: bytes
    prev_head: bytes
    new_head: bytes
    signature: bytes


@dataclass(frozen=True, init=False)
class SampleBlock:
    """One block of accelerometer samples on the device's sample clock.

    ``accel_g`` has shape (n,) and includes gravity (about +1 g when level). The drive phase
    of sample k is ``phase_rad + 2*pi*freq_hz*k/sample_rate_hz``.
    """

    first_index: int
    counts: npt.NDArray[np.int16]
    accel_g: npt.NDArray[np.float64]
    phase_rad: float
    freq_hz: float
    drive: float
    missing_before: int  # samples lost between the previous block and this one

    def __init__(
        self,
        first_index: int,
        counts: npt.NDArray[np.int16],
        accel_g: npt.NDArray[np.float64],
        phase_rad: float,
        freq_hz: float,
        drive: float,
        missing_before: int,
    ) -> None:
        # One block is made for every block read: the fields set as one dict, half the cost
        # of the frozen dataclass's own __init__ (a guarded setattr per field).
        _set_attribute(
            self,
            "__dict__",
            {
                "first_index": first_index,
                "counts": counts,
                "accel_g": accel_g,
                "phase_rad": phase_rad,
                "freq_hz": freq_hz,
                "drive": drive,
                "missing_before": missing_before,
            },
        )


@dataclass(frozen=True, eq=False, init=False)
class SampleBatch:
    """Consecutive sample blocks of one length, as arrays (what :meth:`DeviceClient.read_blocks`
    returns). Row j is the block :meth:`DeviceClient.read_block` would have returned j-th.

    Attributes
    ----------
    first_index, missing_before : (blocks,) int64
    counts : (blocks, n) int16
    accel_g : (blocks, n) float64
        Includes gravity, as :attr:`SampleBlock.accel_g`.
    phase_rad, freq_hz, drive : (blocks,) float64
        The drive's phase at each block's first sample, its frequency and amplitude.
    """

    first_index: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int16]
    accel_g: npt.NDArray[np.float64]
    phase_rad: npt.NDArray[np.float64]
    freq_hz: npt.NDArray[np.float64]
    drive: npt.NDArray[np.float64]
    missing_before: npt.NDArray[np.int64]

    def __init__(
        self,
        first_index: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int16],
        accel_g: npt.NDArray[np.float64],
        phase_rad: npt.NDArray[np.float64],
        freq_hz: npt.NDArray[np.float64],
        drive: npt.NDArray[np.float64],
        missing_before: npt.NDArray[np.int64],
    ) -> None:
        # The fields set as one dict, as SampleBlock's (one batch is made for every read).
        _set_attribute(
            self,
            "__dict__",
            {
                "first_index": first_index,
                "counts": counts,
                "accel_g": accel_g,
                "phase_rad": phase_rad,
                "freq_hz": freq_hz,
                "drive": drive,
                "missing_before": missing_before,
            },
        )

    def __len__(self) -> int:
        return int(self.first_index.size)

    @property
    def samples(self) -> int:
        """Samples in all blocks."""
        return int(self.counts.size)

    @property
    def end_index(self) -> int:
        """The sample index after the last block."""
        return int(self.first_index[-1]) + int(self.counts.shape[1])

    def block(self, j: int) -> SampleBlock:
        """Row ``j`` as a :class:`SampleBlock`."""
        return SampleBlock(
            first_index=int(self.first_index[j]),
            counts=self.counts[j],
            accel_g=self.accel_g[j],
            phase_rad=float(self.phase_rad[j]),
            freq_hz=float(self.freq_hz[j]),
            drive=float(self.drive[j]),
            missing_before=int(self.missing_before[j]),
        )

    def blocks(self) -> list[SampleBlock]:
        return [self.block(j) for j in range(len(self))]

    def split(self, count: int) -> tuple[SampleBatch, SampleBatch]:
        """The first ``count`` blocks and the rest."""
        head = SampleBatch(
            self.first_index[:count],
            self.counts[:count],
            self.accel_g[:count],
            self.phase_rad[:count],
            self.freq_hz[:count],
            self.drive[:count],
            self.missing_before[:count],
        )
        tail = SampleBatch(
            self.first_index[count:],
            self.counts[count:],
            self.accel_g[count:],
            self.phase_rad[count:],
            self.freq_hz[count:],
            self.drive[count:],
            self.missing_before[count:],
        )
        return head, tail

    @classmethod
    def join(cls, parts: list[SampleBatch]) -> SampleBatch:
        """The blocks of ``parts`` in order (blocks of one length)."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.first_index for p in parts]),
            np.concatenate([p.counts for p in parts]),
            np.concatenate([p.accel_g for p in parts]),
            np.concatenate([p.phase_rad for p in parts]),
            np.concatenate([p.freq_hz for p in parts]),
            np.concatenate([p.drive for p in parts]),
            np.concatenate([p.missing_before for p in parts]),
        )

    @classmethod
    def of_block(cls, block: SampleBlock) -> SampleBatch:
        return cls(
            np.array([block.first_index], dtype=np.int64),
            block.counts[None, :],
            block.accel_g[None, :],
            np.array([block.phase_rad]),
            np.array([block.freq_hz]),
            np.array([block.drive]),
            np.array([block.missing_before], dtype=np.int64),
        )
