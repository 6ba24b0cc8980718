"""Signed prescriptions (issue 10, docs/trust.md): only what the enrolled clinic signed runs.

The attacks tried here are the patient's own computer's: install an unsigned file, a file
signed by another key, a signed file with one byte changed; edit the installed file (raise the
dose, change a comment) and start; re-enrol the home with another clinic's key. Each is refused
with one sentence, a non-zero exit and no traceback, and the plate never moves (judged from the
simulator's truth file). Signing, checking and installing agree with the dose limits table at
each limit and just beyond it.
"""

from __future__ import annotations

import json
import stat
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import truth_score
from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS
from sessions.cli import main
from sessions.clinic.paths import ENV_CLINIC_HOME
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from sessions.prescription import (
    NOT_SIGNED_SENTENCE,
    check_signature,
    fingerprint,
    read_public_key,
)
from sessions.wording import say
from tests.simhelpers import (
    clinic_public_key_file,
    clinic_signing_key,
    enrol_home,
    install_signed,
    load_truth,
    protocol_yaml,
    sign_text,
    signed_protocol,
)

DEVICE_ID = "SIM-RX"
NOT_ENROLLED = "This computer is not enrolled with your clinic."


def one_sentence(err: str, sentence: str) -> None:
    """The patient's one line: the sentence, no traceback."""
    assert err.strip().splitlines() == [f"liv: {sentence}"], err
    assert "Traceback" not in err


def sim(truth: Path | None = None) -> str:
    url = f"sim://?mass=70&seed=4&speed=max&device_id={DEVICE_ID}"
    return url if truth is None else f"{url}&truth={truth}"


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    """A home enrolled with the test clinic, with a calibrated plate and no protocol."""
    h = enrol_home(tmp_path / "home")
    with DeviceClient.open(f"sim://?mass=0&seed=1&speed=max&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


def sessions_of(home: LivHome) -> list[object]:
    if not home.db_path().exists():
        return []
    with SessionLog(home.db_path()) as log:
        return list(log.sessions())


# --------------------------------------------------------------------------------------------
# liv clinic init


def test_clinic_init_keeps_the_private_key_private_and_prints_the_public_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    out = capsys.readouterr().out
    private, public = clinic / "clinic-private.pem", clinic / "clinic-public.pem"
    assert stat.S_IMODE(clinic.stat().st_mode) == 0o700
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PRIVATE" not in public.read_bytes()
    assert str(public) in out
    assert fingerprint(read_public_key(public)) in out


def test_clinic_init_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    before = {p.name: p.read_bytes() for p in clinic.iterdir()}
    capsys.readouterr()
    assert main(["clinic", "init", "--dir", str(clinic)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err
    assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in clinic.iterdir()} == before


def test_the_clinic_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CLINIC_HOME, str(tmp_path / "from-env"))
    assert main(["clinic", "init"]) == 0
    assert (tmp_path / "from-env" / "clinic-private.pem").exists()


def test_a_key_others_can_read_is_not_used_to_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    (clinic / "clinic-private.pem").chmod(0o640)
    source = tmp_path / "p.yaml"
    source.write_text(protocol_yaml())
    capsys.readouterr()
    assert main(["protocol", "sign", str(source), "--clinic-dir", str(clinic)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    assert not (tmp_path / "p.signed.yaml").exists()


# --------------------------------------------------------------------------------------------
# sign -> enrol -> install -> start, through the command line, judged from truth


def test_sign_enrol_install_and_start_deliver_the_prescribed_dose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic, home_dir = tmp_path / "clinic", tmp_path / "home"
    source = tmp_path / "p-0123.yaml"
    source.write_text(protocol_yaml(target_g="0.25", minutes_per_session="1"))
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    assert main(["protocol", "sign", str(source), "--clinic-dir", str(clinic)]) == 0
    signed = tmp_path / "p-0123.signed.yaml"
    assert signed.read_bytes().startswith(source.read_bytes())  # the clinic's text, unchanged
    home = ["--home", str(home_dir)]
    assert main(["enroll", str(clinic / "clinic-public.pem"), *home]) == 0
    assert main(["protocol", "install", str(signed), *home]) == 0
    assert (home_dir / "protocol.yaml").read_bytes() == signed.read_bytes()
    with DeviceClient.open(f"sim://?mass=0&seed=1&speed=max&device_id={DEVICE_ID}") as dev:
        LivHome(home_dir).calibrations().save(identify(dev))
    capsys.readouterr()

    truth_path = tmp_path / "truth.npz"
    assert main(["start", "--device", sim(truth_path), *home]) == 0
    (record,) = sessions_of(LivHome(home_dir))
    assert record.status is SessionStatus.COMPLETED  # type: ignore[attr-defined]
    scored = truth_score.score(load_truth(truth_path), 0.25, 0.10)  # the signed 0.25 g
    assert scored.seconds_at_dose >= 58.0, scored
    assert scored.hold_mean_peak_g == pytest.approx(0.25, rel=0.03)

    assert main(["status", *home]) == 0
    out = capsys.readouterr().out
    assert say("status.prescription_ok") in out
    assert "clinic key" not in out  # the key's detail is for engineers
    assert main(["-v", "status", *home]) == 0
    err = capsys.readouterr().err
    assert "valid, by clinic key" in err
    assert "the clinic this home is enrolled with" in err


# --------------------------------------------------------------------------------------------
# liv protocol install refuses what the enrolled clinic did not sign


def _altered_one_byte(data: bytes) -> bytes:
    at = data.index(b"target_g: 0.3") + len(b"target_g: 0.")
    return data[:at] + b"4" + data[at + 1 :]  # 0.3 g -> 0.4 g, one byte


def _comment_added(data: bytes) -> bytes:
    return b"# reviewed\n" + data


def _signature_removed(data: bytes) -> bytes:
    return data[: data.index(b"# liv-signature:")]


def _other_clinic(data: bytes) -> bytes:
    return sign_text(_signature_removed(data), Ed25519PrivateKey.generate())


REFUSED = {
    "unsigned": _signature_removed,
    "signed by another clinic": _other_clinic,
    "one byte altered (dose raised)": _altered_one_byte,
    "a comment added": _comment_added,
    "signature mangled": lambda d: d.replace(b"sig=", b"sig=A", 1),
    "signed twice": lambda d: d + d[d.index(b"# liv-signature:") :],
}


@pytest.mark.parametrize("attack", REFUSED)
def test_install_refuses_what_the_enrolled_clinic_did_not_sign(
    home: LivHome, tmp_path: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = signed_protocol(home).read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(REFUSED[attack](good))
    assert main(["protocol", "install", str(bad), "--home", str(home.root)]) == 1
    one_sentence(capsys.readouterr().err, NOT_SIGNED_SENTENCE)
    assert not home.protocol_path.exists()


def test_install_refuses_when_the_home_is_not_enrolled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.yaml"
    source.write_bytes(sign_text(protocol_yaml()))
    home = tmp_path / "home"
    assert main(["protocol", "install", str(source), "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"liv: {NOT_ENROLLED}")
    assert err.count("\n") == 1
    assert not (home / "protocol.yaml").exists()


SIGNED = sign_text(protocol_yaml(study_start="2026-01-01", study_end="2026-12-31"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_single_byte_change_anywhere_in_a_signed_file_is_trusted(data: st.DataObject) -> None:
    """Text, comment, key, signature, padding bits of its base64, the final newline."""
    assert check_signature(SIGNED, clinic_signing_key().public_key()).trusted
    at = data.draw(st.integers(0, len(SIGNED) - 1), label="byte")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != SIGNED[at]), label="value")
    changed = SIGNED[:at] + bytes([new]) + SIGNED[at + 1 :]
    assert not check_signature(changed, clinic_signing_key().public_key()).trusted


@pytest.mark.parametrize("field", ["key=", "sig="])
def test_a_base64_spelling_that_decodes_to_the_same_bytes_is_still_a_changed_file(
    field: str,
) -> None:
    """The last base64 character carries unused bits: flipping one leaves the decoded key or
    signature as it was, yet the file changed, so it is refused."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    start = SIGNED.index(field.encode()) + len(field)
    last = SIGNED.index(b"=", start) - 1  # the character before the padding
    value = alphabet.index(SIGNED[last : last + 1])
    twin = alphabet[value ^ 1 : (value ^ 1) + 1]  # differs only in an unused bit
    changed = SIGNED[:last] + twin + SIGNED[last + 1 :]
    assert changed != SIGNED
    assert not check_signature(changed, clinic_signing_key().public_key()).trusted


@pytest.mark.parametrize("edit", ["drop the final newline", "CRLF", "a trailing blank line"])
def test_the_end_of_the_signature_line_is_exact(edit: str) -> None:
    changed = {
        "drop the final newline": SIGNED[:-1],
        "CRLF": SIGNED[:-1] + b"\r\n",
        "a trailing blank line": SIGNED + b"\n",
    }[edit]
    assert not check_signature(changed, clinic_signing_key().public_key()).trusted


# --------------------------------------------------------------------------------------------
# liv start checks the installed file again, every time


EDITS = {
    "dose raised in the installed file": _altered_one_byte,
    "a comment changed in the installed file": lambda d: d.replace(
        b"patient_id", b"#x\npatient_id"
    ),
    "replaced by an unsigned file": _signature_removed,
    "replaced by a file signed by another key": _other_clinic,
}


@pytest.mark.parametrize("edit", EDITS)
def test_start_refuses_an_installed_protocol_edited_after_install(
    home: LivHome, tmp_path: Path, edit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    install_signed(home)
    home.protocol_path.write_bytes(EDITS[edit](home.protocol_path.read_bytes()))
    capsys.readouterr()
    truth = tmp_path / "truth.npz"
    assert main(["start", "--device", sim(truth), "--home", str(home.root)]) == 1
    one_sentence(capsys.readouterr().err, NOT_SIGNED_SENTENCE)
    assert sessions_of(home) == []
    assert not truth.exists()  # the plate was never opened
    assert main(["status", "--home", str(home.root)]) == 1
    one_sentence(capsys.readouterr().err, NOT_SIGNED_SENTENCE)


def test_the_same_installed_protocol_starts_when_untouched(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control for the test above: nothing but the edit makes start refuse."""
    install_signed(home)
    assert main(["start", "--device", sim(), "--home", str(home.root)]) == 0


# --------------------------------------------------------------------------------------------
# Enrolment


def test_enrolling_with_another_key_needs_replace_and_is_recorded(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_signed(home)
    first = home.clinic_key_path.read_bytes()
    new_clinic = tmp_path / "new-clinic"
    assert main(["clinic", "init", "--dir", str(new_clinic)]) == 0
    new_key = new_clinic / "clinic-public.pem"
    capsys.readouterr()

    assert main(["enroll", str(new_key), "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "--replace" in err
    assert err.count("\n") == 1
    assert home.clinic_key_path.read_bytes() == first

    assert main(["enroll", str(new_key), "--replace", "--home", str(home.root)]) == 0
    history = [json.loads(line) for line in home.enrolment_history_path.read_text().splitlines()]
    assert [h["event"] for h in history] == ["enrolled", "replaced"]
    new_fp = fingerprint(read_public_key(new_key))
    assert history[1]["clinic_key"] == new_fp
    assert history[1]["replaced_key"] == history[0]["clinic_key"]
    # the protocol the old clinic signed is no longer trusted
    capsys.readouterr()
    assert main(["start", "--device", sim(), "--home", str(home.root)]) == 1
    one_sentence(capsys.readouterr().err, NOT_SIGNED_SENTENCE)


def test_enrolling_again_with_the_same_key_changes_nothing(home: LivHome, tmp_path: Path) -> None:
    before = home.enrolment_history_path.read_bytes()
    assert main(["enroll", str(clinic_public_key_file(tmp_path)), "--home", str(home.root)]) == 0
    assert home.enrolment_history_path.read_bytes() == before


def test_a_damaged_enrolled_key_refuses_everything_until_replaced(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_signed(home)
    home.clinic_key_path.write_text("not a key\n")
    capsys.readouterr()
    assert main(["start", "--device", sim(), "--home", str(home.root)]) == 1
    assert "is damaged. Ask your clinic to enrol it again" in capsys.readouterr().err
    key = clinic_public_key_file(tmp_path)
    assert main(["enroll", str(key), "--home", str(home.root)]) == 1
    assert "--replace" in capsys.readouterr().err
    assert main(["enroll", str(key), "--replace", "--home", str(home.root)]) == 0
    last = json.loads(home.enrolment_history_path.read_text().splitlines()[-1])
    assert last["replaced_key"] == "a damaged key"
    assert main(["status", "--home", str(home.root)]) == 0


def test_enrol_refuses_a_file_that_is_not_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    capsys.readouterr()
    home = tmp_path / "home"
    private = clinic / "clinic-private.pem"
    assert main(["enroll", str(private), "--home", str(home)]) == 1
    assert "is not a clinic key file" in capsys.readouterr().err
    assert not (home / "clinic-key.pem").exists()


# --------------------------------------------------------------------------------------------
# liv protocol check reports the signature


def test_check_reports_the_signature(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unsigned = tmp_path / "template.yaml"
    unsigned.write_text(protocol_yaml())
    signed = signed_protocol(home)
    foreign = tmp_path / "foreign.yaml"
    foreign.write_bytes(_other_clinic(signed.read_bytes()))
    altered = tmp_path / "altered.yaml"
    altered.write_bytes(_altered_one_byte(signed.read_bytes()))
    at_home = ["--home", str(home.root)]

    def check(path: Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["protocol", "check", str(path), *at_home])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = check(unsigned)
    assert code == 0
    assert "signature         not signed" in out
    code, out, _ = check(signed)
    assert code == 0
    assert "the clinic this home is enrolled with" in out
    code, out, _ = check(foreign)
    assert code == 0
    assert "but this home is enrolled with clinic key" in out
    code, out, err = check(altered)
    assert code == 1
    assert "INVALID" in out
    assert NOT_SIGNED_SENTENCE in err


# --------------------------------------------------------------------------------------------
# One table of dose limits: sign, check and install agree with it at each limit


def _minus(value: float, step: str) -> str:
    return f"{Decimal(f'{value:g}') - Decimal(step)}"


def _plus(value: float, step: str) -> str:
    return f"{Decimal(f'{value:g}') + Decimal(step)}"


def _limit_cases() -> list[tuple[str, str, bool]]:
    cases = []
    for name, (low, high) in DOSE_LIMITS.protocol_ranges().items():
        step = "1" if name == "sessions_per_day" else "0.001"
        for value, accepted in (
            (f"{low:g}", True),
            (f"{high:g}", True),
            (_minus(low, step), False),
            (_plus(high, step), False),
        ):
            cases.append((name, value, accepted))
    return cases


def _protocol_with(name: str, value: str) -> str:
    """A protocol that is valid in every other field, with ``name`` set to ``value``."""
    fields: dict[str, object] = {name: value}
    if name == "frequency_hz":
        pass
    elif name == "sweep_seconds_each_way":
        fields = {
            "frequency_hz": None,
            "frequency_schedule": (
                f"{{sweep: {{low_hz: 30, high_hz: 90, seconds_each_way: {value}}}}}"
            ),
            "minutes_per_session": 30,
        }
    elif name in ("sessions_per_day", "min_gap_hours"):
        fields["sessions_per_day" if name == "min_gap_hours" else "min_gap_hours"] = (
            1 if name == "min_gap_hours" else 0
        )
    return protocol_yaml(**fields)


@pytest.mark.parametrize(("name", "value", "accepted"), _limit_cases())
def test_sign_check_and_install_agree_with_the_dose_limits(
    tmp_path: Path,
    name: str,
    value: str,
    accepted: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = enrol_home(tmp_path / "home")
    clinic = tmp_path / "clinic"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    source = tmp_path / "p.yaml"
    source.write_text(_protocol_with(name, value))
    expected = 0 if accepted else 1

    assert main(["protocol", "check", str(source)]) == expected
    assert main(["protocol", "sign", str(source), "--clinic-dir", str(clinic)]) == expected
    assert (tmp_path / "p.signed.yaml").exists() == accepted

    # install: signed by the enrolled clinic whatever it holds (the signer would refuse it), so
    # only the limits can refuse it
    signed = tmp_path / "for-install.yaml"
    signed.write_bytes(sign_text(source.read_bytes()))
    assert main(["protocol", "install", str(signed), "--home", str(home.root)]) == expected
    assert home.protocol_path.exists() == accepted
    err = capsys.readouterr().err
    if not accepted:
        assert f"{name} = {value} is outside the allowed" in err or (
            name == "sweep_seconds_each_way" and "seconds_each_way" in err
        ), err
        assert "Traceback" not in err
