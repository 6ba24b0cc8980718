"""What ``liv COMMAND --help`` says beyond the options: a description and an example."""

from __future__ import annotations

import argparse
import textwrap

EXIT_STATUS_HELP = """\
exit status: 0 ok; 1 failure (refused, tripped, nobody on the plate, out of time, an error);
2 usage error; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP, a closed output pipe)

example:
  liv status"""

# Every command's description and an example, shown by `liv COMMAND --help` (a test checks
# that no command is left without them).
_DOCS: dict[str, tuple[str, str]] = {
    "start": (
        "Run the session that is due now on the configured plate, following the installed "
        "protocol; refuses, with the reason, when none is due.",
        "liv start",
    ),
    "status": (
        "Show today's sessions (done and due), when the next one may start, and the streak of "
        "complete days.",
        "liv status",
    ),
    "demo": (
        "Two weeks of clearly labelled sessions on a simulated plate for a made-up patient (a "
        "missed day, a session cut short, a safety stop), today's session, the status and the "
        "clinician's HTML report, kept in a directory of its own; real data is never touched.",
        "liv demo",
    ),
    "protocol": (
        "Check a patient protocol file, sign it with the clinic's key (at the clinic), or "
        "install a signed one as this installation's active protocol.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol check": (
        "Validate a protocol file, describe it and say whether it is signed, by which clinic "
        "key, and whether this home is enrolled with that key; warns when its study has ended "
        "or starts later. Exits 1 when the file was changed after it was signed.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol sign": (
        "At the clinic: validate a protocol file with the same rules and dose limits as every "
        "other command, then write it signed with the clinic's private key.",
        "liv protocol sign examples/twice-daily-30hz.yaml --out p-0042.signed.yaml",
    ),
    "protocol install": (
        "Make a protocol signed by the clinic this home is enrolled with the active protocol; "
        "refuses an unsigned, altered or foreign-signed file. Warns when its study has ended "
        "or starts later.",
        "liv protocol install p-0042.signed.yaml",
    ),
    "enroll": (
        "Enrol this home with the clinic's public key, once at set-up; only prescriptions "
        "signed with that key are installed and run. A different key needs --replace, and "
        "every change is recorded.",
        "liv enroll clinic-public.pem",
    ),
    "clinic init": (
        "Make the clinic's Ed25519 key pair in the clinic's data directory (private key mode "
        "600 in a 700 directory); never overwrites a key. Prints the public key file to give "
        "to each home and its fingerprint.",
        "liv clinic init --dir /srv/liv-clinic",
    ),
    "sessions": (
        "List the logged sessions, one line each, with their local start time.",
        "liv sessions --since 2026-01-01",
    ),
    "show": (
        "Show one logged session in plain values, with its amplitude over time; the id may be "
        "shortened to any start of it that no other session shares.",
        "liv show 3f2a --svg session.svg",
    ),
    "report": (
        "Adherence for clinicians over the report period (up to today): the log's integrity, "
        "the last session, weekly adherence against the target, days, flagged sessions.",
        "liv report --format html --out report.html",
    ),
    "verify": (
        "Check the log's hash chains; exits 1 when a finished record was changed.",
        "liv verify",
    ),
    "export": (
        "Write the whole log as JSONL (for 'liv import'), a plain CSV with one row per session "
        "or the detailed CSVs, or one patient's sessions as a FHIR R4 Bundle (docs/fhir.md); "
        "every export but FHIR carries the log's verification status.",
        "liv export --format csv --out ~/Documents",
    ),
    "import": (
        "Merge a log written by 'liv export'; records already present are skipped.",
        "liv import log.jsonl",
    ),
    "device": (
        "Talk to a plate directly (engineers): list the ports, show a plate's handshake, "
        "drive it open loop, or set the plate this installation uses.",
        "liv device list",
    ),
    "device info": ("Show the plate's handshake.", "liv device info --device hwgrep://SER=A1B2C3"),
    "device drive": (
        "Drive the plate open loop at a fixed fraction of full scale, with soft ramps, and "
        "print the measured peak. Engineers only (--engineer); the drive is refused above what "
        "the plate's calibration says reaches the host's ceiling, and the run is logged as "
        "engineering.",
        "liv device drive --engineer --device sim:// --freq 45 --drive 0.05 --seconds 5",
    ),
    "device set": (
        "Configure the plate this installation uses; only a plate that answers is accepted. "
        "A hwgrep:// URL finds it by USB identity, which does not change between boots.",
        "liv device set hwgrep://SER=A1B2C3",
    ),
    "device list": (
        "List the serial ports with their USB identity (VID:PID, serial number) and the "
        "--device URL that finds each one by it.",
        "liv device list",
    ),
    "calibrate": (
        "Measure the empty plate's response across the calibration band and store it for "
        "the device; nobody may stand on the plate. Engineers only (--engineer); logged as an "
        "engineering run.",
        "liv calibrate --engineer --device hwgrep://SER=A1B2C3",
    ),
    "run": (
        "One closed-loop exposure at a fixed frequency or a schedule, without a protocol "
        "(engineers only: --engineer). Logged as an engineering run, never as therapy.",
        "liv run --engineer --device sim:// --freq 45 --amplitude 0.3 --seconds 60",
    ),
    "sim": ("The simulated plate.", "liv sim serve --pty"),
    "sim serve": (
        "Run a simulated plate in real time behind a pty or a TCP port, for other programs.",
        "liv sim serve --tcp 127.0.0.1:4000 --sim 'sim://?mass=90&seed=2'",
    ),
    "clinic": (
        "The clinic's side, run on the clinic's computer (docs/clinic.md): its signing key, and "
        "its database of many patients: import patients' exports, see every patient at once, "
        "one patient's report, FHIR export.",
        "liv clinic overview",
    ),
    "clinic plate": (
        "The plates the clinic dispensed: the clinic takes in only records that a registered "
        "plate vouches for.",
        "liv clinic plate list",
    ),
    "clinic plate add": (
        "Register a plate the clinic dispensed: its device id and its Ed25519 public key (64 "
        "hex digits). Its exports can then be imported.",
        "liv clinic plate add LIV-0042 "
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
    ),
    "clinic plate list": (
        "List the registered plates: device id, key id, first counter, when registered.",
        "liv clinic plate list",
    ),
    "clinic import": (
        "Verify patients' exports and take them into the clinic database; a file that does "
        "not verify, holds a record its registered plate does not vouch for, or contradicts "
        "records already held is refused whole (exit 1).",
        "liv clinic import P001.jsonl P002.jsonl",
    ),
    "clinic overview": (
        "Every patient: adherence over 7 and 30 days and the study, days since the last "
        "session, open flags, device and firmware; who needs attention first.",
        "liv clinic overview --format html --out clinic/overview.html",
    ),
    "clinic problems": (
        "The problems imports found that no clinician has acknowledged yet, oldest first, each "
        "with the short id 'liv clinic acknowledge' takes; --all adds the acknowledged ones "
        "with who acknowledged them, when and the note.",
        "liv clinic problems --all",
    ),
    "clinic acknowledge": (
        "Record that a problem was dealt with (e.g. the patient was called), with a short "
        "note: it then no longer counts on the overview. The problem itself is kept unchanged; "
        "the same problem found again in the same file stays acknowledged, a new occurrence "
        "is open.",
        "liv clinic acknowledge 3f2a9c1b --note 'called the patient; clock set to automatic'",
    ),
    "clinic report": (
        "One patient's full adherence report (as 'liv report') from the clinic database.",
        "liv clinic report P001 --format html --out P001.html",
    ),
    "clinic export": (
        "One patient's sessions as a FHIR R4 Bundle (docs/fhir.md).",
        "liv clinic export --format fhir P001 --out P001.fhir.json",
    ),
    "help": (
        "Show the help of liv, or of the command named: the same page as 'liv COMMAND --help'.",
        "liv help start",
    ),
    "completion": (
        "Print a shell completion script for liv, generated from its commands.",
        'eval "$(liv completion bash)"   # or add it to ~/.bashrc',
    ),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order of its help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def document(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every subcommand its description and an example (from _DOCS)."""
    for name, sub in subcommands(parser).items():
        key = f"{path} {name}".strip()
        if key in _DOCS:
            description, example = _DOCS[key]
            sub.description = textwrap.fill(description, width=78)
            sub.epilog = f"example:\n  {example}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        document(sub, key)
