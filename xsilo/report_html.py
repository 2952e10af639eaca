"""Self-contained HTML pages with inline SVG plots, for the run and silo reports.

Pure Python, no dependency: a page is one string (CSS inline, plots as ``<svg>`` elements,
no script, nothing fetched — its Content-Security-Policy forbids every external load). The
coordinator's run report (``coordinator.report``) and a silo's own report
(``silo_client.report``) both build on it; it imports nothing of the project.

Every plot is an ``<svg class="plot">`` holding one ``<path class="series">`` per series
(points as ``<circle>``), so a reader (or a test) can tell an empty plot from a drawn one.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["Series", "bar_chart", "line_chart", "page", "table"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
_W, _H = 520, 290
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 150, 34, 44

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;
color:#1b1b1b;padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.92em}
th,td{border:1px solid #d8d8d8;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.status-completed{color:#1a7f37}.status-failed{color:#c62828}.status-stopped{color:#b26a00}
.note{color:#555;font-size:0.92em}.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.plot{border:1px solid #e4e4e4;background:#fff}code{background:#f5f5f5;padding:0 3px}
.empty{color:#777;font-style:italic}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (x, y); a y of None breaks the line there."""

    label: str
    points: Sequence[tuple[float, float | None]]
    dashed: bool = False
    color: str | None = None


@dataclass
class _Axes:
    x0: float
    x1: float
    y0: float
    y1: float
    width: int = _W
    height: int = _H
    ticks: list[float] = field(default_factory=list)

    def x(self, v: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return _LEFT + (v - self.x0) / span * (self.width - _LEFT - _RIGHT)

    def y(self, v: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.height - _BOTTOM - (v - self.y0) / span * (self.height - _TOP - _BOTTOM)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 × 10^k steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    v = start
    while v < high + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _padded(low: float, high: float) -> tuple[float, float]:
    """A little room above and below the data (a flat line sits mid-plot)."""
    span = high - low
    pad = (abs(low) * 0.1 or 0.5) if span <= 0 else 0.04 * span
    bottom = low - pad
    return (0.0 if low >= 0 > bottom else bottom), high + pad


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _frame(title: str, axes: _Axes, x_label: str, y_label: str,
           x_ticks: Iterable[float]) -> list[str]:
    out = [f'<svg class="plot" role="img" width="{axes.width}" height="{axes.height}" '
           f'viewBox="0 0 {axes.width} {axes.height}" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>",
           f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    right, bottom = axes.width - _RIGHT, axes.height - _BOTTOM
    for t in axes.ticks:
        y = axes.y(t)
        out.append(f'<line x1="{_LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        x = axes.x(t)
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" font-size="11" '
                   f'text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<line x1="{_LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
    out.append(f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{bottom}" stroke="#888"/>')
    out.append(f'<text x="{(_LEFT + right) / 2:.1f}" y="{axes.height - 8}" font-size="12" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="14" y="{(_TOP + bottom) / 2:.1f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(_TOP + bottom) / 2:.1f})">{escape(y_label)}</text>')
    return out


def _legend(axes: _Axes, entries: Sequence[tuple[str, str, bool]]) -> list[str]:
    out, x = [], axes.width - _RIGHT + 12
    for i, (label, color, dashed) in enumerate(entries):
        y = _TOP + 8 + 18 * i
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2.5"{dash}/>')
        shown = label if len(label) <= 20 else label[:19] + "…"
        out.append(f'<text x="{x + 28}" y="{y + 4}" font-size="11">{escape(shown)}</text>')
    return out


def _x_ticks(xs: Sequence[float]) -> list[float]:
    unique = sorted(set(xs))
    if len(unique) <= 12:
        return unique
    every = math.ceil(len(unique) / 12)
    return unique[::every]


def line_chart(title: str, series: Sequence[Series], *, x_label: str = "round",
               y_label: str = "", y_range: tuple[float, float] | None = None,
               hlines: Sequence[tuple[float, str]] = ()) -> str:
    """An SVG line chart; ``hlines`` are labelled horizontal reference lines (e.g. a budget).

    Returns a note instead of a plot when no series has a finite point.
    """
    finite = [(x, y) for s in series for x, y in s.points
              if y is not None and math.isfinite(y) and math.isfinite(x)]
    if not finite:
        return f'<p class="empty">{escape(title)}: no data</p>'
    xs = [x for x, _ in finite]
    ys = [y for _, y in finite] + [h for h, _ in hlines]
    low, high = y_range if y_range is not None else _padded(min(ys), max(ys))
    ticks = _nice_ticks(low, high)
    x0, x1 = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 0.5, min(xs) + 0.5)
    axes = _Axes(x0, x1, ticks[0], ticks[-1], ticks=ticks)
    out = _frame(title, axes, x_label, y_label, _x_ticks(xs))
    legend = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        d, pen_down, dots = [], False, []
        for x, y in s.points:
            if y is None or not math.isfinite(y):
                pen_down = False
                continue
            d.append(f"{'L' if pen_down else 'M'}{axes.x(x):.1f} {axes.y(y):.1f}")
            dots.append(f'<circle cx="{axes.x(x):.1f}" cy="{axes.y(y):.1f}" r="2.8" '
                        f'fill="{color}"/>')
            pen_down = True
        if not d:
            continue
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(f'<path class="series" data-label="{escape(s.label)}" d="{" ".join(d)}" '
                   f'fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out.extend(dots)
        legend.append((s.label, color, s.dashed))
    for value, label in hlines:
        y = axes.y(value)
        out.append(f'<path class="reference" data-label="{escape(label)}" '
                   f'd="M{_LEFT} {y:.1f} L{axes.width - _RIGHT} {y:.1f}" stroke="#c62828" '
                   f'stroke-width="1.5" stroke-dasharray="3 3" fill="none"/>')
        legend.append((label, "#c62828", True))
    out.extend(_legend(axes, legend))
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(title: str, xs: Sequence[float], stacks: Mapping[str, Sequence[float | None]], *,
              x_label: str = "round", y_label: str = "",
              colors: Mapping[str, str] | None = None) -> str:
    """Stacked bars: one bar per x, one segment per entry of ``stacks`` (None counts as 0),
    bottom to top; ``colors`` by segment label (else the palette)."""
    if not xs or not stacks:
        return f'<p class="empty">{escape(title)}: no data</p>'
    totals = [sum(max(0.0, (v[i] or 0.0)) for v in stacks.values()) for i in range(len(xs))]
    if not any(t > 0 for t in totals):
        return f'<p class="empty">{escape(title)}: no data</p>'
    ticks = _nice_ticks(0.0, max(totals))
    pad = 0.5
    axes = _Axes(min(xs) - pad, max(xs) + pad, 0.0, ticks[-1], ticks=ticks)
    out = _frame(title, axes, x_label, y_label, _x_ticks(xs))
    width = max(2.0, 0.7 * (axes.x(1) - axes.x(0)) if len(set(xs)) > 1 else 40.0)
    legend = []
    base = [0.0] * len(xs)
    for k, (label, values) in enumerate(stacks.items()):
        color = (colors or {}).get(label) or PALETTE[k % len(PALETTE)]
        rects = []
        for i, x in enumerate(xs):
            v = max(0.0, values[i] or 0.0)
            if v <= 0:
                continue
            top, bottom = axes.y(base[i] + v), axes.y(base[i])
            rects.append(f"M{axes.x(x) - width / 2:.1f} {bottom:.1f} h{width:.1f} "
                         f"V{top:.1f} h{-width:.1f} Z")
            base[i] += v
        if rects:
            out.append(f'<path class="series" data-label="{escape(label)}" d="{" ".join(rects)}" '
                       f'fill="{color}" stroke="none"/>')
            legend.append((label, color, False))
    out.extend(_legend(axes, legend))
    out.append("</svg>")
    return "\n".join(out)


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[object]], *,
          left: int | Collection[int] = 1) -> str:
    """An HTML table (no header row when ``headers`` is None); ``left``: how many leading
    columns (or which column indices) are left-aligned text; None shows as "–"."""
    text_columns = set(range(left)) if isinstance(left, int) else set(left)

    def cell(tag: str, i: int, v: object) -> str:
        cls = ' class="l"' if i in text_columns else ""
        text = "–" if v is None else (_fmt(v) if isinstance(v, float) else str(v))
        return f"<{tag}{cls}>{escape(text)}</{tag}>"

    head = ("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers))
            + "</tr></thead>") if headers is not None else ""
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    return f"<table>{head}<tbody>\n{body}\n</tbody></table>"


def page(title: str, sections: Iterable[tuple[str, str]], *, subtitle: str = "") -> str:
    """A whole HTML document: ``sections`` are (heading, trusted HTML body)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p>{subtitle}</p>")
    for heading, body in sections:
        parts.append(f"<section><h2>{escape(heading)}</h2>\n{body}\n</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
