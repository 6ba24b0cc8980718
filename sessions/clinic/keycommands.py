"""The clinic's key commands: ``liv clinic init`` and ``liv protocol sign`` (docs/cli.md).

Both find the clinic's directory through ``sessions.clinic.paths.clinic_root``
(``--clinic-dir``, ``$LIV_CLINIC_HOME``, the default). The database commands of the same
``liv clinic`` group are in ``sessions.clinic.commands``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sessions.clinic.paths import PRIVATE_KEY_NAME, clinic_root
from sessions.text import echo

# The signing library (sessions.clinic.keys) is imported by the two commands when they run,
# never when the parser is built: `liv --help` stays fast (docs/performance.md).

CLINIC_DIR_HELP = (
    "the clinic's data directory (default: $LIV_CLINIC_HOME, else $XDG_DATA_HOME/liv-clinic, "
    "else ~/.local/share/liv-clinic)"
)


def add_clinic_dir(p: argparse.ArgumentParser, *aliases: str) -> argparse.ArgumentParser:
    p.add_argument("--clinic-dir", *aliases, dest="clinic_dir", metavar="DIR",
                   help=CLINIC_DIR_HELP)  # fmt: skip
    return p


def add_clinic_init(ccmds: Any) -> argparse.ArgumentParser:
    """Register ``liv clinic init`` in the ``liv clinic`` group."""
    init: argparse.ArgumentParser = add_clinic_dir(
        ccmds.add_parser("init", help="make the clinic's signing key pair"), "--dir"
    )
    init.set_defaults(handler=cmd_clinic_init)
    return init


def add_protocol_sign(pcmds: Any) -> argparse.ArgumentParser:
    """Register ``liv protocol sign`` in the ``liv protocol`` group."""
    sign: argparse.ArgumentParser = pcmds.add_parser(
        "sign", help="check a protocol file and sign it with the clinic key"
    )
    sign.add_argument("file", metavar="FILE", help="the protocol file (YAML), unsigned")
    sign.add_argument(
        "--key", type=Path, metavar="FILE",
        help=f"the clinic's private key (default: the clinic directory's {PRIVATE_KEY_NAME})",
    )  # fmt: skip
    sign.add_argument(
        "--out", type=Path, metavar="FILE",
        help="where to write the signed protocol (default: FILE with .signed.yaml)",
    )  # fmt: skip
    sign.add_argument(
        "--record-signed", action="store_true", dest="record_signed",
        help="FILE is a prescription this clinic signed before it recorded what it signs: "
        "check its signature is this clinic's and record it, write nothing",
    )  # fmt: skip
    sign.add_argument(
        "--db", metavar="URL",
        help="the clinic database that records the signed prescription, so that sessions run "
        "under any other are flagged at import (default: as for 'liv clinic import')",
    )  # fmt: skip
    add_clinic_dir(sign)
    sign.set_defaults(handler=cmd_protocol_sign)
    return sign


def cmd_clinic_init(args: argparse.Namespace) -> int:
    from sessions.clinic.keys import init_clinic_key

    root = clinic_root(args.clinic_dir)
    made = init_clinic_key(root)
    echo(f"clinic key made in {root}")
    echo(f"private key       {made.private_key} (keep it at the clinic; never copy it to a home)")
    echo(f"public key        {made.public_key} (give it to each home: 'liv enroll FILE')")
    echo(f"fingerprint       {made.fingerprint}")
    return 0


def cmd_protocol_sign(args: argparse.Namespace) -> int:
    from sessions.clinic.keys import (
        ClinicKeyError,
        default_signed_path,
        load_signing_key,
        sign_protocol_file,
    )
    from sessions.commands.protocols import describe_protocol

    source = Path(args.file)
    key_path = args.key or clinic_root(args.clinic_dir) / PRIVATE_KEY_NAME
    key = load_signing_key(key_path)
    if args.record_signed:
        return _record_signed(args, source, key)
    signed = sign_protocol_file(source, key)
    out = args.out or default_signed_path(source)
    if out.resolve() == source.resolve():
        raise ClinicKeyError(f"--out {out} is the file being signed: write it elsewhere")
    from sessions.clinic.db import ClinicDb, redacted, resolve_db_url
    from sessions.clinic.plates import record_prescription

    url = resolve_db_url(args.db, args.clinic_dir)
    with ClinicDb(url) as db:  # recorded first: no signed file the clinic does not know
        record_prescription(db, signed.protocol, signed.fingerprint)
    out.write_bytes(signed.data)
    echo(f"signed {source} with clinic key {signed.fingerprint}; wrote {out}")
    echo(f"recorded as prescription {signed.protocol.sha256[:12]} in {redacted(url)}")
    echo("\n".join(describe_protocol(signed.protocol)))
    return 0


def _record_signed(args: argparse.Namespace, source: Path, key: Any) -> int:
    """``liv protocol sign --record-signed``: a file signed before the clinic recorded what it
    signs (an upgrade), checked to carry this clinic's valid signature, then recorded."""
    from sessions.clinic.db import ClinicDb, redacted, resolve_db_url
    from sessions.clinic.keys import check_own_signed_file
    from sessions.clinic.plates import record_prescription

    signed = check_own_signed_file(source, key)
    url = resolve_db_url(args.db, args.clinic_dir)
    with ClinicDb(url) as db:
        record_prescription(db, signed.protocol, signed.fingerprint)
    echo(f"{source} carries this clinic's signature ({signed.fingerprint}); nothing written")
    echo(f"recorded as prescription {signed.protocol.sha256[:12]} in {redacted(url)}")
    return 0
