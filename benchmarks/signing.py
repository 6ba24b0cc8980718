"""A clinic of the benchmarks' own: it signs the protocols they install (docs/trust.md).

A home installs only a protocol signed by the clinic it is enrolled with, so a benchmark that
sets up a home plays the clinic too: a key pair made once in ``clinic_dir``, the home enrolled
with its public key, the protocol signed with its private key. Never a real clinic's key.
"""

from __future__ import annotations

from pathlib import Path

from sessions.clinic.keys import init_clinic_key, key_files, load_signing_key, sign_protocol_file
from sessions.home import LivHome


def signed_by_bench_clinic(clinic_dir: Path, home: LivHome, source: Path) -> Path:
    """Enrol ``home`` with the bench clinic in ``clinic_dir`` and sign ``source`` beside it."""
    private, public = key_files(clinic_dir)
    if not private.exists():
        init_clinic_key(clinic_dir)
    home.enrol(public)
    signed = sign_protocol_file(source, load_signing_key(private))
    out = source.with_name(source.name + ".signed")
    out.write_bytes(signed.data)
    return out
