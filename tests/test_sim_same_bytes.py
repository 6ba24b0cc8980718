"""Same seed, same bytes (issue 11, session 7): the simulator made faster sends what it sent.

benchmarks/sim_bytes.py runs short scripted hosts on ``sim://`` ports (open and closed loop, a
warm coil and sway, a patient, link and device faults, the firmware ceiling tripping between
run-ahead batches, an open coil circuit, a pulled cable, a plate up before the host) with the
device stepped block by block and many blocks per call. The digests below are those of the
code before session 7's speed work (commit 2788c78, ``PYTHONPATH=<that tree> python
benchmarks/sim_bytes.py``): the wire bytes the host read, the truth file's arrays and the
plate's and filter's state at the end must stay bit for bit the same. A deliberate change to
the plate's behaviour updates them, and says so in docs/simulator.md. (The digests hold for
this numpy and BLAS; another build may round a product differently, and then the base
commit's digests are to be made again there.)
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from benchmarks.sim_bytes import Case, cases, run_case

# The build the digests were made on: numpy's products (its bundled OpenBLAS) may round
# differently in another numpy release or on another processor family, and the pin would then
# fail with nothing wrong in this code. On another build the pin is skipped, saying how to make
# the base commit's digests again there.
DIGESTS_BUILD = ("2.4.6", "x86_64")

# case name: SHA-256 of (the wire bytes read, the truth file's arrays, the end state)
BEFORE: dict[str, tuple[str, str, str]] = {
    "open loop": (
        "7ddb60be2caa171bbe8c6b1e8fab326b672f9e90aab6536555d3f03a8374f6f3",
        "a71e1d8df70d5a9a573171c2f94cd8312a9d927857dec52a6477ea52c7bc03ee",
        "8b4493a086e12674d1c63661af3741da0caccf6f0e00f238629bedbbcdae3527",
    ),
    "closed loop": (
        "2ef22c52e665ebb7435dc5d9789587ee94320bba3ef815923487c665163d0a82",
        "714256c5fe355d3043322ebfebedbe06430de66578c9e19457fe87fb60fcb753",
        "599db440c050bee21a70fe71dc3c932198a83ee635ee4fcfccd94ea0d50718f7",
    ),
    "a warm coil cooling, sway, standing": (
        "6ef803963e45310fe9a6a5713568d8492b98b2e6f12ea5c84eee69c604036a05",
        "aaa10b1e70cae147beef06bfd335074d8755c4d708367b7c722c96284edce3a9",
        "0da5eafc2957af6334bbebbd4856ba2363578b9eb64185d5122f52cc03524e50",
    ),
    "a patient steps on and off": (
        "312dbdd408a0dd9bc295c93f78b7e41c8fd392f5339daeb9daabf7ac7e2fd1c9",
        "5435165e024f8db426eb1705abffd9678bee2e974b809bc26fc4c3b7cd4ad73b",
        "9cc804a23fb6e48b080d689289b39a4c348959c635b32516b6518b06615be974",
    ),
    "link faults: latency, drops, corruption": (
        "697018cda64299eaef74b6cd99c24d0f74a077fbf09f5157efaf75c56878e7b4",
        "daf5de63b6e1543cb5d98eaec063541ec3d44022c3c1bd218a4206a261d736c8",
        "51b87ae8fce75a27bb9d08f536a340841673830477817d28248c69afdd1b7f85",
    ),
    "device faults: load step, gain loss, index jump, stuck sensor": (
        "b9f41e9ce3bf4995cd9bbc5dddc0837055464a43cfa295c4ca0ec9c1490f64e0",
        "1eda50552ed0182ca18962c8dc50dad8723c2eecb322f3700fb14ddc13642f68",
        "59bee1178980850764639aa41a6a31cd6192abe21567819140b2a207ae6a4753",
    ),
    "reset, then the host starts again; watchdog": (
        "b4a34a98b08a7a5cc29c812e4e4361c04fcafc011785a9661981be7d7afcb997",
        "03abd3ff827275e15bea204c37229fd45f3f80a8e5d6a895395ed891500a7736",
        "2ecad32d1f2429578f6b8a8e21e59c1018c89b602c265e6f533cb9ff188650c4",
    ),
    "the firmware ceiling on an empty plate": (
        "258a476227ad92418d52b2131fd286a75507b46840b79fc573335f2d5122d39e",
        "e24bf50fdf056a3a03d2eaf614ec9879246083b1ccca56044ca6724dbf068bc0",
        "db167d3ff59d1b7e4cfe9b32094723a7ede3ed0224721d9b67b84434df08fdac",
    ),
    "a patient steps off a constant drive: the ceiling trips between batches": (
        "ca463d1c58a5a39b9246b0520edbe8fbab292724fd1ff09c404a52842ffe18fd",
        "24758d18ba284f4f9a7634fdcde873024547001cdd014bc498e699db56769eb6",
        "9c15c26c2920ede37aa406054aa3cf1060b647495fcfbbbacb8730b3153abc2b",
    ),
    "up before the host; sensor saturates, then disconnects": (
        "09745782df2a4970ab95b1b5a16e3fd724607b47a2f01754878aecd49aab1129",
        "534be662a97561f3a6d06cc8d570a258424d16a0ff364144c4035947fa2bb43d",
        "73d94ff2db394e8dc9b7bdd696e61ca73c9243f39408cb482b4db879853d9e10",
    ),
    "the coil's circuit opens under a steady drive": (
        "705099d1e4d346415ef5d9623e4fd79103395eab8f511b540cc6309a95146366",
        "70d68f45ad52012438f469900389954fbdd8fb0163c14eb58099462e949f9cc6",
        "65472163524741c6d0f8198420827808dfe9609a259cda2f7ecbbf87bb15d40a",
    ),
    "the cable is pulled mid-batch": (
        "ef6e3dcd73f0b0c3125404e7d2ce56067fe39ec63ece6e19763e822538be3071",
        "fe946533e9d85b55254feaadea08d0514dd3c7c4ca9f9356f281dbe150c46d0a",
        "6c6fcbeebb22022703415bb98a4e5482a34249cb19646add742b11fb23d87675",
    ),
    "open loop, 90 Hz and sensor noise": (
        "38a82c1156d37244b52a9a90fd993eeef9bfb9d60b1dda6e175e6fadc5e7ae43",
        "523d4d3501e04413e7ecba165d3c0a4a42597223887cfdaca4990768d778974f",
        "db68adc445297097c11f1bc789dae0d8ab48b10a81ace93757c78bc4bb783f28",
    ),
}


def test_every_case_has_its_digests() -> None:
    assert sorted(c.name for c in cases()) == sorted(BEFORE)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_same_seed_same_bytes(case: Case, tmp_path: Path) -> None:
    build = (np.__version__, platform.machine())
    if build != DIGESTS_BUILD:
        pytest.skip(
            f"digests made on numpy {DIGESTS_BUILD[0]} ({DIGESTS_BUILD[1]}), this is numpy "
            f"{build[0]} ({build[1]}): make them again from commit 2788c78 with "
            "PYTHONPATH=<that tree> python benchmarks/sim_bytes.py"
        )
    result = run_case(case, tmp_path)
    assert (result["wire"], result["truth"], result["state"]) == BEFORE[case.name]
