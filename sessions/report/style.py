"""The HTML page's one inline style sheet (screen, narrow screen and print)."""

from __future__ import annotations

_CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #d5d9e0; --full: #3f9e5f;
  --partial: #e9a62b; --missed: #cf3f3f; --today: #4a78c2; --future: #eef0f3; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: var(--ink);
  font: 14px/1.45 "Segoe UI", "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans",
  sans-serif; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; }
header { border-bottom: 3px solid var(--ink); padding-bottom: 12px; margin-bottom: 18px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h1 .pid { font-family: "DejaVu Sans Mono", Consolas, monospace; background: #eef1f6;
  padding: 1px 8px; border-radius: 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0; }
.integrity.ok { color: var(--muted); font-size: 12.5px; margin: 0 0 6px; }
.integrity.failed { background: #cf3f3f; color: #fff; font-size: 16px; padding: 12px 16px;
  border-radius: 6px; margin: 0 0 14px; }
h2.changed { color: #6b3fa0; }
.changed-note { color: #6b3fa0; font-weight: 600; margin: 6px 0 0; }
.cal td.wk .mo { display: block; font-size: 11px; }
.facts { display: grid; grid-template-columns: repeat(3, 1fr); gap: 2px 24px; margin: 0;
  font-size: 13px; }
.facts div { display: flex; gap: 8px; padding: 3px 0; border-bottom: 1px dotted var(--line); }
.facts dt { color: var(--muted); min-width: 118px; }
.facts dd { margin: 0; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  border-top: 5px solid var(--ink); }
.card .big { font-size: 30px; font-weight: 700; line-height: 1.15; }
.card .what { font-weight: 600; }
.card .detail { color: var(--muted); font-size: 12.5px; }
.card.good { border-top-color: var(--full); }
.card.fair { border-top-color: var(--partial); }
.card.poor { border-top-color: var(--missed); }
.demo-banner { background: #fff3cd; border: 2px solid #c99a00; padding: 8px 12px; }
.note-line { color: var(--muted); font-size: 12.5px; margin: 6px 0 0; }
table { border-collapse: collapse; }
.cal { width: 100%; table-layout: fixed; font-size: 12px; }
.cal th { color: var(--muted); font-weight: 600; padding: 2px 3px; text-align: center; }
.cal th.wk, .cal td.wk { width: 92px; text-align: left; white-space: nowrap; }
.cal th.fig, .cal td.fig { width: 76px; text-align: right; white-space: nowrap; }
.cal td { padding: 2px; height: 36px; }
.cal td.wk { color: var(--muted); padding-left: 2px; }
.cal td.wk b { color: var(--ink); }
.cal td.fig { font-variant-numeric: tabular-nums; padding-right: 6px; }
.day { border-radius: 4px; height: 32px; padding: 2px 5px; position: relative;
  border: 1px solid transparent; }
.day .n { font-size: 11px; font-weight: 600; }
.day .c { position: absolute; right: 5px; bottom: 2px; font-size: 11.5px; font-weight: 700; }
.day.full { background: var(--full); color: #fff; }
.day.partial { background: repeating-linear-gradient(135deg, #f2c462 0 6px, #e9a62b 6px 12px);
  color: #2b1d00; }
.day.missed { background: var(--missed); color: #fff; }
.day.missed .c::before { content: "\\2715\\00a0"; }
.day.today { background: #fff; border: 2px solid var(--today); color: var(--today); }
.day.future { background: var(--future); border: 1px dashed #c3c8d0; color: #8a919c; }
.day.other { background: #e4e6ea; color: #7a818c; }
.day.outside { background: transparent; color: #c0c4ca; border: 1px dotted #e1e3e7; }
.day .pc { position: absolute; right: 3px; top: 2px; font-size: 9.5px; font-weight: 700;
  line-height: 13px; padding: 0 3px; border-radius: 3px; background: #6b3fa0; color: #fff; }
.legend .day .pc { top: 2px; right: 8px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 10px 0 0; padding: 0;
  list-style: none; font-size: 12.5px; }
.legend li { display: flex; align-items: center; gap: 6px; }
.legend .day { width: 30px; height: 18px; padding: 0; display: inline-block; }
svg { display: block; max-width: 100%; height: auto; font-family: inherit; }
.chart-legend { display: flex; gap: 18px; font-size: 12.5px; color: var(--muted);
  margin: 4px 0 0 52px; flex-wrap: wrap; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: -1px; margin-right: 5px; }
.data { width: 100%; font-size: 12.5px; }
.data th { text-align: left; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); padding: 5px 8px; }
.data td { border-bottom: 1px solid var(--line); padding: 5px 8px; vertical-align: top; }
.data td.id { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 11.5px;
  word-break: break-all; max-width: 220px; }
.data td.sha { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 11.5px;
  white-space: nowrap; }
.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
.data ul { margin: 0; padding: 0; list-style: none; }
.data li + li { margin-top: 2px; }
.tag { display: inline-block; min-width: 118px; font-size: 11px; font-weight: 700;
  padding: 0 6px; border-radius: 3px; margin-right: 6px; background: #e8ebf0; color: #333b47;
  text-transform: uppercase; letter-spacing: 0.02em; }
.tag.serious { background: #f6d5d5; color: #7a1010; }
.tag.dose { background: #fbe6bd; color: #5a3b00; }
.traces { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.traces figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.traces figcaption { font-size: 11.5px; color: var(--muted); word-break: break-all; }
.rules { color: var(--muted); font-size: 12.5px; }
.rules li { margin: 2px 0; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0);
  white-space: nowrap; }
footer { margin-top: 28px; padding-top: 8px; border-top: 1px solid var(--line);
  color: var(--muted); font-size: 12px; }
@media (max-width: 700px) {
  main { padding: 12px 10px 24px; }
  .facts { grid-template-columns: 1fr; }
  .cards { grid-template-columns: 1fr 1fr; }
  .traces { grid-template-columns: 1fr; }
  .cal th.fig, .cal td.fig { display: none; }
  .cal th.wk, .cal td.wk { width: 58px; font-size: 10px; }
  .day { padding: 1px 2px; }
  .day .c { right: 2px; font-size: 10px; }
  .data { display: block; overflow-x: auto; }
  .chart-legend { margin-left: 0; }
}
@media print { body { background: #fff; } main { padding: 0; max-width: none; }
  h2 { break-after: avoid; } .cal tr, .data tr, figure { break-inside: avoid; } }
"""
