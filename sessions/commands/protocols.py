"""``liv protocol check|install`` and ``liv enroll``: the prescription and the clinic's key."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from sessions.commands.common import EXIT_REFUSED, home_of, print_json
from sessions.prescription import (
    NOT_SIGNED_SENTENCE,
    SignatureStatus,
    check_signature,
)
from sessions.protocol import (
    PatientProtocol,
    protocol_from_bytes,
    read_protocol_bytes,
)
from sessions.text import echo
from sessions.wording import (
    day_text,
    minutes_text,
    say,
)


def describe_protocol(p: PatientProtocol) -> list[str]:
    windows = ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in p.daily_windows) or "any time"
    return [
        f"patient           {p.patient_id}",
        f"target            {p.target_g:g} g peak at {p.schedule.describe()}",
        f"sessions          {p.sessions_per_day} a day x {p.minutes_per_session:g} minutes at dose "
        f"(+/-{100 * p.dose_tolerance:g}% counts as at dose)",
        f"gap               at least {p.min_gap_hours:g} h between sessions; windows: {windows}",
        f"study             {p.study_start.isoformat()} to {p.study_end.isoformat()} "
        f"({p.timezone})",
        f"sha256            {p.sha256}",
    ]


def study_warning(protocol: PatientProtocol, now: datetime) -> str | None:
    """One sentence when the study has ended or not yet started on the patient's today."""
    today = now.astimezone(protocol.zone).date()
    if today > protocol.study_end:
        return say("install.study_ended", day=day_text(protocol.study_end))
    if today < protocol.study_start:
        return say("install.study_later", day=day_text(protocol.study_start))
    return None


def plain_protocol(p: PatientProtocol) -> str:
    """The prescription in a patient's words (the technical lines are for ``-v`` and check)."""
    per_day = (
        "1 session a day" if p.sessions_per_day == 1 else f"{p.sessions_per_day} sessions a day"
    )
    return say(
        "install.summary",
        per_day=per_day,
        minutes=minutes_text(p.minutes_per_session),
        first=day_text(p.study_start),
        last=day_text(p.study_end),
    )


def _warn_about_study(protocol: PatientProtocol) -> None:
    warning = study_warning(protocol, datetime.now(UTC))
    if warning is not None:
        echo(f"liv: warning: {warning}", file=sys.stderr)


def cmd_protocol_check(args: argparse.Namespace) -> int:
    """Validate a protocol file and say whether (and by whom) it is signed.

    An unsigned file is a valid template (exit 0); a signature that does not match the text
    fails (exit 1), as it would at install.
    """
    data = read_protocol_bytes(args.file)
    protocol = protocol_from_bytes(data, args.file)
    home = home_of(args)
    signature = check_signature(data, home.clinic_key())
    if getattr(args, "json", False):
        from sessions.jsonshapes import protocol_check_shape

        warning = study_warning(protocol, datetime.now(UTC))
        shape = protocol_check_shape(args.file, protocol, warning)
        shape["signature"] = signature.status.value
        shape["signer"] = signature.signer_fingerprint
        shape["signature_text"] = signature.describe()
        print_json(shape)
        return EXIT_REFUSED if signature.status is SignatureStatus.ALTERED else 0
    echo(f"{args.file}: valid")
    echo("\n".join(describe_protocol(protocol)))
    echo(f"signature         {signature.describe()}")
    _warn_about_study(protocol)
    if signature.status is SignatureStatus.ALTERED:
        echo(f"liv: {args.file}: {NOT_SIGNED_SENTENCE}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def cmd_protocol_install(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.install_protocol(Path(args.file))
    echo(say("install.done"))
    echo(plain_protocol(protocol))
    if getattr(args, "verbose", False):  # the engineer's view: what was installed, where
        echo(f"installed {args.file} as the active protocol in {home.root}")
        echo("\n".join(describe_protocol(protocol)))
        echo(f"signature         {home.protocol_signature().describe()}")
    _warn_about_study(protocol)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    home = home_of(args)
    done = home.enrol(Path(args.key_file), replace=args.replace)
    if not done.changed:
        echo(f"this home is already enrolled with clinic key {done.fingerprint}")
    elif done.replaced is None:
        echo(f"this home is enrolled with clinic key {done.fingerprint}")
    else:
        echo(
            f"this home is now enrolled with clinic key {done.fingerprint} instead of "
            f"{done.replaced} (recorded in {home.enrolment_history_path}); install a "
            "prescription signed by the new clinic"
        )
    return 0
