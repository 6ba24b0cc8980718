"""The HTML adherence report: self-contained, escaped, well-formed, and drawn by a real browser.

The browser test runs Debian's chromium headless (``apt-get install chromium``) on the crafted
month of tests/test_adherence.py and checks both the DOM it parsed and the pixels it painted.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from dataclasses import dataclass, fields, replace
from datetime import date, time
from pathlib import Path
from typing import Any

import pytest

from sessions.adherence import AdherenceReport, compute_adherence
from sessions.log import TrustResult, VerifyResult
from sessions.report import (
    ReportContext,
    render_csv,
    render_html,
    render_session_svg,
    render_table,
)
from tests.test_adherence import TODAY, Book, Rec, at, crafted_month, d, make_protocol

CHROMIUM = "/usr/bin/chromium"
BROWSER_TIMEOUT_S = 60.0
WINDOW = (1200, 1600)
FULL_RGB = (0x3F, 0x9E, 0x5F)  # the calendar's colours (sessions/report/style.py _CSS)
MISSED_RGB = (0xCF, 0x3F, 0x3F)
PARTIAL_RGB = (0xE9, 0xA6, 0x2B)


def envelope(
    minutes: float, target_g: float = 0.3, stop_s: float | None = None
) -> tuple[tuple[float, float], ...]:
    """About 10 points a second: a 4-s ramp, the hold with a small ripple, a 4-s ramp down."""
    end_s = stop_s if stop_s is not None else minutes * 60.0 + 8.0
    points = []
    for k in range(int(end_s * 10) + 1):
        t_s = k / 10
        if t_s < 4.0:
            g = target_g * t_s / 4.0
        elif stop_s is None and t_s > end_s - 4.0:
            g = target_g * (end_s - t_s) / 4.0
        else:
            g = target_g * (1.0 + 0.004 * math.sin(1.7 * t_s))
        points.append((round(t_s, 3), round(g, 5)))
    return tuple(points)


def month_with_envelopes() -> list[Rec]:
    protocol_json = make_protocol().canonical_json()
    records = []
    for r in crafted_month():
        stop = r.safety_events[0]["t_s"] if r.safety_events else None
        trace = envelope(r.minutes_at_dose, stop_s=stop)
        records.append(replace(r, envelope=trace, protocol_json=protocol_json))
    return records


def month_report() -> tuple[AdherenceReport, Any, list[Rec]]:
    protocol = make_protocol()
    records = month_with_envelopes()
    return compute_adherence(protocol, records, today=TODAY), protocol, records


def month_html() -> str:
    report, protocol, records = month_report()
    return render_html(report, protocol, records)


# --------------------------------------------------------------------------------------------
# Static checks on the text


def test_the_page_is_self_contained() -> None:
    page = month_html()
    lowered = page.lower()
    for forbidden in ("http:", "https:", "src=", "href=", "<link", "<script", "@import", "url("):
        assert forbidden not in lowered, forbidden
    assert "//" not in lowered  # no protocol-relative address either
    assert lowered.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in lowered
    assert lowered.count("<svg") >= 3  # minutes, accuracy, traces


def test_the_page_shows_the_figures_a_clinician_needs() -> None:
    page = month_html()
    assert "P-0042" in page
    assert "90.0%" in page  # sessions completed at dose, 54 of 60
    assert "92.9%" in page  # minutes at dose, 557.5 of 600
    assert "54 of 60 prescribed sessions" in page
    assert "557.5 of 600.0 prescribed minutes" in page
    assert "Thu 5 Mar 2026" in page  # the missed day, named
    assert "0.3 g peak, +/-10%" in page
    assert "30 Hz" in page
    assert "Flagged sessions (9)" in page  # 16 flags on 9 sessions
    assert "coil over temperature" in page
    assert "LIV-0001" in page
    assert "LIV-0002" in page


def test_calendar_cells_carry_text_not_colour_alone() -> None:
    page = month_html()
    cells = re.findall(r'<td><div class="day (\w+)" title="([^"]*)">', page)
    assert len(cells) == 5 * 7  # W10..W14, Monday to Sunday
    statuses = Counter(status for status, _ in cells)
    # 03-02..03-31 in the study; 03-01 does not show (a Sunday, in W09); 04-01..04-05 outside
    assert statuses == Counter({"full": 25, "partial": 4, "missed": 1, "outside": 5})
    titles = {title.split(":")[0]: title for _, title in cells}
    assert titles["Thu 5 Mar 2026"] == (
        "Thu 5 Mar 2026: missed: no minutes at dose; 0 of 2 sessions at dose, 0.0 of 20.0 min"
    )
    assert "30.0 min logged in all" in titles["Thu 12 Mar 2026"]  # the extra third session


def test_every_svg_is_well_formed() -> None:
    page = month_html()
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL)
    assert len(charts) == 3 + 5  # weekly, minutes, accuracy, five traces of flagged sessions
    for chart in charts:
        root = ET.fromstring(chart)
        assert root.get("role") == "img"
        assert root.get("aria-label")


def test_a_malicious_patient_id_and_log_text_are_escaped() -> None:
    @dataclass(frozen=True)
    class Schedule:
        def describe(self) -> str:
            return "30 Hz <b>bold</b>"

    @dataclass(frozen=True)
    class Window:
        start: time
        end: time

    @dataclass(frozen=True)
    class Evil:
        patient_id: str = "<script>alert('x')</script>"
        target_g: float = 0.3
        dose_tolerance: float = 0.1
        schedule: Schedule = Schedule()
        sha256: str = "<i>" + "0" * 61
        minutes_per_session: float = 10.0
        sessions_per_day: int = 2
        min_gap_hours: float = 3.0
        daily_windows: tuple[Window, ...] = (Window(time(7), time(9)),)
        study_start: date = date(2026, 3, 2)
        study_end: date = date(2026, 3, 31)
        timezone: str = "Europe/London"

    evil = Evil()
    book = Book(patient_id=evil.patient_id, device_id='"><img src=x onerror=alert(1)>')
    book.add(
        d(10),
        1,
        8,
        at_dose=3.0,
        status="tripped",
        reason="</td><script>alert(2)</script>",
        safety_events=({"reason": "<svg onload=alert(3)>", "t_s": 60.0, "detail": "&"},),
        envelope=envelope(3.0, stop_s=60.0),
    )
    report = compute_adherence(evil, book.records, today=TODAY)
    page = render_html(report, evil, book.records)
    assert "<script" not in page
    assert "<img" not in page
    assert "<svg onload" not in page
    assert "<b>bold" not in page
    assert "<i>0" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    for chart in re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL):
        ET.fromstring(chart)
    assert "\x1b" not in render_table(
        replace(report, patient_id="P-1\x1b[2J")
    )  # no terminal control codes either


def test_the_same_input_gives_the_same_page() -> None:
    report, protocol, records = month_report()
    assert render_html(report, protocol, records) == render_html(
        report, protocol, list(reversed(records))
    )


def test_an_empty_report_still_renders() -> None:
    protocol = make_protocol()
    report = compute_adherence(protocol, [], today=d(20, 2))
    page = render_html(report, protocol, [])
    assert "the study has not started yet (it starts on 2026-03-02)" in page
    assert "no days yet" in page
    assert page.count('<td><div class="day future"') == 30


def test_the_banner_names_what_failed_chain_or_countersignature() -> None:
    """A log whose hash chains hold but whose countersignatures do not is headed as not vouched
    for, not as a failed integrity check that the sentence after it contradicts."""
    report, protocol, records = month_report()
    intact = VerifyResult(ok=True, records_checked=len(records), first_bad=None)
    trust = TrustResult()
    trust.add("record 3 is not covered by any countersignature")
    page = render_html(
        report, protocol, records, context=ReportContext(integrity=intact, trust=trust)
    )
    assert "LOG INTEGRITY FAILED" not in page
    assert (
        '<div class="integrity failed" role="alert"><strong>LOG NOT VOUCHED FOR BY THE PLATE'
        "</strong> the hash chains are intact," in page
    )
    broken = VerifyResult(ok=False, records_checked=len(records), first_bad=None)
    page = render_html(report, protocol, records, context=ReportContext(integrity=broken))
    assert (
        '<div class="integrity failed" role="alert"><strong>LOG INTEGRITY FAILED</strong> the '
        "session log was changed after it was written" in page
    )


@dataclass(frozen=True)
class KindRec(Rec):
    """A logged session with its kind (therapy, simulated or engineering) and local start."""

    kind: str = "therapy"
    started_local: str = ""


def test_sessions_that_do_not_count_change_neither_last_session_nor_start_times() -> None:
    """An engineering run is listed apart and changes nothing else: not the last session the
    report names, not the start times it lists for a day."""
    _, protocol, records = month_report()
    therapy = [r for r in records if r.local_date <= d(29)]
    run = KindRec(**{f.name: getattr(therapy[-1], f.name) for f in fields(Rec)})
    run = replace(
        run,
        session_id="ENG-1",
        kind="engineering",
        local_date=d(31),
        started_utc=at(d(31), 11, 43),
        started_local="2026-03-31T11:43:00+01:00",
    )
    logged = [*therapy, run]
    report = compute_adherence(protocol, logged, today=TODAY)
    assert [s.session_id for s in report.set_apart] == ["ENG-1"]
    context = ReportContext.of(report, protocol, logged, None)
    assert context.last_session == max(r.local_date for r in therapy) == d(29)
    assert d(31) not in context.starts
    assert "Last session: 2026-03-29 (4 days ago)." in render_table(report, context)


def test_csv_has_one_row_per_day() -> None:
    report, _, _ = month_report()
    lines = render_csv(report).splitlines()
    assert lines[0].startswith("patient_id,date,weekday,iso_week,status,counted")
    assert len(lines) == 1 + 30
    patient, rx = report.patient_id, make_protocol().sha256[:12]  # rx: the protocol that day
    missed = "missed,yes,2,0,20.0,0.0,0.0,0,0.0,0.0"
    partial = "partial,yes,2,1,20.0,18.0,20.0,2,0.5,0.9"
    # the last two columns: sessions not counted that day (none here), the demo label (none)
    assert lines[4] == f"{patient},2026-03-05,Thu,2026-W10,{missed},{rx},,,"
    assert lines[7] == f"{patient},2026-03-08,Sun,2026-W10,{partial},{rx},,,"


# --------------------------------------------------------------------------------------------
# One session's envelope


def test_session_svg_draws_the_envelope_band_and_events() -> None:
    records = month_with_envelopes()
    tripped = next(r for r in records if r.status == "tripped")
    svg = render_session_svg(tripped, standalone=True)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    line = root.find(f"{ns}polyline")
    assert line is not None
    assert len(line.get("points", "").split()) >= 100
    band = root.find(f"{ns}rect[@class='band']")
    assert band is not None  # +/-10% read from the session's own protocol
    assert "coil_temperature at 170.2 s" in svg
    assert "tripped" in svg


def test_session_svg_keeps_long_sessions_small_and_peaks_visible() -> None:
    record = month_with_envelopes()[1]  # a full 10-minute session, about 6000 points
    spiky = list(record.envelope)
    spiky[3000] = (spiky[3000][0], 0.45)
    svg = render_session_svg(replace(record, envelope=tuple(spiky)), dose_tolerance=0.05)
    points = re.search(r'points="([^"]*)"', svg)
    assert points is not None
    assert len(points.group(1).split()) <= 2 * 720
    ys = [float(p.split(",")[1]) for p in points.group(1).split()]
    assert min(ys) < 40  # the 0.45 g spike survived the thinning, near the top of the plot
    assert "xmlns" not in svg  # inline in HTML it needs none


def test_session_svg_without_data() -> None:
    record = replace(month_with_envelopes()[1], envelope=(), protocol_json="not json")
    svg = render_session_svg(record)
    assert "no amplitude recorded" in svg
    assert 'class="band"' not in svg  # no tolerance known: only the target line
    ET.fromstring(svg)


# --------------------------------------------------------------------------------------------
# A real browser


def _run_chromium(args: list[str], home: Path) -> bytes:
    """Run chromium in its own process group; kill the whole group on timeout."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    with subprocess.Popen(
        [CHROMIUM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium did not finish in {BROWSER_TIMEOUT_S:g} s")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def _chromium_args(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ]


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit truecolour PNG, with the stdlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8
    assert colour in (2, 6)  # truecolour, with or without alpha
    assert interlace == 0
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for r in range(height):
        start = r * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows] if bpp == 3 else _rgb(rows)


def _rgb(rows: list[bytes]) -> list[bytes]:
    return [bytes(b for k, b in enumerate(row) if k % 4 != 3) for row in rows]


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(month_html(), encoding="utf-8")
    return path


needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)",
)


@needs_chromium
def test_chromium_parses_the_calendar_and_charts(report_file: Path, tmp_path: Path) -> None:
    dom = _run_chromium(
        [*_chromium_args(tmp_path / "profile-dom"), "--dump-dom", report_file.as_uri()],
        tmp_path,
    ).decode("utf-8")
    assert "<title>LIV therapy adherence: P-0042</title>" in dom
    assert len(re.findall(r'<td><div class="day \w+" title="', dom)) == 35
    assert len(re.findall(r'<div class="day full"', dom)) == 25
    assert dom.count("<svg") == 8
    assert "Flagged sessions (9)" in dom


@needs_chromium
def test_chromium_paints_the_report(report_file: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _run_chromium(
        [
            *_chromium_args(tmp_path / "profile-shot"),
            f"--screenshot={shot}",
            "--hide-scrollbars",
            report_file.as_uri(),
        ],
        tmp_path,
    )
    assert shot.is_file()
    assert shot.stat().st_size > 30_000  # a blank 1200x1600 page compresses to a few kB
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == WINDOW
    colours: Counter[tuple[int, int, int]] = Counter()
    for row in rows[::2]:
        colours.update(zip(row[0::3], row[1::3], row[2::3], strict=True))
    assert len(colours) > 50  # text, charts and cells, not a blank page
    white = colours[(255, 255, 255)] / sum(colours.values())
    assert white < 0.9
    # the calendar's colours were painted, in plausible amounts (25 full days, 1 missed)
    assert colours[FULL_RGB] > 20 * colours[MISSED_RGB] > 0
    assert colours[PARTIAL_RGB] > 0


# --------------------------------------------------------------------------------------------
# The page at real screen sizes: an ongoing one-year study, five weeks in

# Measures the page it is put in (a copy for the test; the product's page has no script) and
# writes the figures into the harness page, which chromium dumps.
_PROBE = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement;
  var box = function (e) { var r = e.getBoundingClientRect(); return [r.top, r.bottom]; };
  var out = {scrollWidth: d.scrollWidth, innerWidth: window.innerWidth,
    innerHeight: window.innerHeight, scrollHeight: d.scrollHeight,
    charts: Array.from(document.querySelectorAll('svg.chart')).map(box),
    calendar: box(document.querySelector('table.cal')),
    futureDays: document.querySelectorAll('table.cal div.day.future').length};
  var p = parent.document.createElement('pre');
  p.className = 'probe'; p.textContent = JSON.stringify(out);
  parent.document.body.appendChild(p);
});
</script>"""
SCREENS = ((1280, 800), (390, 844))  # a laptop, a phone


def _measured(page: str, tmp_path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The page's geometry in an iframe of each SCREENS size, as headless chromium lays it out."""
    probed = html.escape(page.replace("</body>", _PROBE + "</body>"), quote=True)
    frames = "".join(
        f'<iframe width="{w}" height="{h}" style="border:0;display:block" srcdoc="{probed}">'
        "</iframe>"
        for w, h in SCREENS
    )
    harness = tmp_path / "harness.html"
    harness.write_text(f"<!DOCTYPE html><html><body>{frames}</body></html>", encoding="utf-8")
    args = [*_chromium_args(tmp_path / "profile-measure"), "--window-size=1400,1900"]
    dom = _run_chromium([*args, "--dump-dom", harness.as_uri()], tmp_path).decode("utf-8")
    found = [
        json.loads(html.unescape(m)) for m in re.findall(r'<pre class="probe">(.*?)</pre>', dom)
    ]
    return {(m["innerWidth"], m["innerHeight"]): m for m in found}


@needs_chromium
def test_the_report_fits_a_laptop_and_a_phone_screen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessions.cli import main
    from tests.test_report_cli import make_clinic_home

    home = make_clinic_home(tmp_path / "home")  # a one-year study: 11 of its 12 months ahead
    assert main(home.argv("report", "--format", "html")) == 0
    page = capsys.readouterr().out
    measured = _measured(page, tmp_path)
    assert set(measured) == set(SCREENS)
    for (width, height), m in measured.items():
        assert m["scrollWidth"] <= width, f"{width} px wide: the page scrolls sideways"
        top, bottom = m["calendar"]
        assert bottom - top < 8 * 60, "the calendar shows more than the report period"
        assert m["futureDays"] <= 6  # the rest of this week, no grey future weeks
        assert m["scrollHeight"] < 6000
        first_chart_top = m["charts"][0][0]
        if width >= 1280:  # the weekly trend is on the first screen, whole
            assert m["charts"][0][1] <= height, m
        else:  # on a phone it starts within the first two screens
            assert first_chart_top < 2 * height, m


@needs_chromium
def test_chromium_screenshot_of_an_ongoing_study_is_screen_sized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessions.cli import main
    from tests.test_report_cli import make_clinic_home

    home = make_clinic_home(tmp_path / "home")
    report = tmp_path / "report.html"
    assert main(home.argv("report", "--format", "html", "--out", str(report))) == 0
    shot = tmp_path / "shot.png"
    args = [*_chromium_args(tmp_path / "profile-shot"), "--window-size=1280,800"]
    _run_chromium([*args, f"--screenshot={shot}", "--hide-scrollbars", report.as_uri()], tmp_path)
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 800)
    # The weekly chart's bars are on this first screen: a column of at least 80 green pixels
    # (calendar days are 32 px tall, card borders 5 px; the daily minutes chart is further down).
    green = bytes(FULL_RGB)
    longest = 0
    for x in range(0, width, 4):
        run = 0
        for row in rows:
            run = run + 1 if row[3 * x : 3 * x + 3] == green else 0
            longest = max(longest, run)
    assert longest >= 80
