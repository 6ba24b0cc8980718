"""Adherence reports for people: a terminal table, CSV, JSON, and one self-contained HTML page.

The HTML page is a single file a clinician can open or attach to a record: inline CSS and
inline SVG, no script, no font, image or style fetched from anywhere. Every piece of text that
came from a protocol or a log (patient id, device id, reasons) is escaped. Nothing in the output
depends on the clock or on the order sessions were given in, so the same log gives the same
file. ``docs/adherence.md`` explains the figures.

The package is split along its seams: ``context`` (ReportContext: integrity, last session,
target; the shapes of what a report reads), ``words`` (wording every form shares), ``table``
(terminal text), ``data`` (CSV and JSON), ``svg`` (what every chart shares), ``trace`` (one
session's chart), ``charts`` (the period's charts), ``calendar_view``, ``blocks`` (the HTML
page's cards, banner and tables), ``style`` (its CSS) and ``page`` (the HTML page).
Import every name from ``sessions.report``.
"""

from __future__ import annotations

from sessions.report.charts import accuracy_text
from sessions.report.context import (
    DEFAULT_ADHERENCE_TARGET,
    ReportContext,
    ReportProtocol,
    ReportSession,
    ReportSummary,
)
from sessions.report.data import CSV_COLUMNS, render_csv, render_json
from sessions.report.page import _TRACE_KINDS as _TRACE_KINDS  # the clinic's importer reads it
from sessions.report.page import MAX_TRACES, render_html
from sessions.report.table import LINE_WIDTH, render_table
from sessions.report.trace import render_session_svg
from sessions.report.words import empty_period_text

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ADHERENCE_TARGET",
    "LINE_WIDTH",
    "MAX_TRACES",
    "ReportContext",
    "ReportProtocol",
    "ReportSession",
    "ReportSummary",
    "accuracy_text",
    "empty_period_text",
    "render_csv",
    "render_html",
    "render_json",
    "render_session_svg",
    "render_table",
]
