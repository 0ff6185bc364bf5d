"""The report's plots, as inline SVG (base64 for ``data:`` URIs): the exchanges over time, the p-value as more
text is scored, and the monitor's risk. Each is made from the evidence alone, or is ``None`` when the evidence
holds nothing to plot.

The SVG keeps text as text (searchable, selectable), carries no date, creator or metadata, and refers to nothing
outside itself. Figures are made without pyplot, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from antidistill.forensics.report.evidence import Evidence, parse_time
from antidistill.forensics.report.wording import fmt_p

#: plot style; text stays text in the SVG (searchable, selectable, a third of the size of outlined glyphs)
_RC = {"svg.hashsalt": "antidistill", "svg.fonttype": "none", "font.size": 9, "font.family": "sans-serif"}

Plot = Callable[[Evidence], str | None]


def _svg(fig: Any) -> str:
    # matplotlib costs about half a second to import: only a report with something to plot pays for it
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):  # savefig reads the svg.* settings
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue().decode("utf-8")
    # the RDF metadata names its vocabularies by URL; drop it so the file holds no outside address at all
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure and its axes, made without pyplot: no global backend or figure registry is touched."""
    from matplotlib.figure import Figure  # lazy: see _svg

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _styled(fn: Plot) -> Plot:
    """Run a plot function under :data:`_RC` (the style applies while artists are made and saved)."""

    @functools.wraps(fn)
    def run(ev: Evidence) -> str | None:
        import matplotlib  # lazy: see _svg

        with matplotlib.rc_context(_RC):
            return fn(ev)

    return run


def _events(ev: Evidence) -> list[tuple[datetime, str, str]]:
    """The monitor's alerts and enforcement actions as ``(time, "alert" | "action", what)``."""
    out = [(a.at, "alert", str(a.get("level") or "")) for a in ev.monitor.alerts if a.at is not None]
    for act in ev.monitor.actions:
        t = parse_time(act.at)
        if t is not None:
            out.append((t, "action", str(act.action or "action")))
    return out


@_styled
def timeline(ev: Evidence) -> str | None:
    """Exchanges per hour/day/week (bars), tokens received (line), the monitor's alerts and actions (lines)."""
    tl = ev.exchanges.timeline
    if not tl.bins or tl.bin is None:
        return None
    import matplotlib.dates as mdates  # lazy: see _svg

    xs = [parse_time(b.start) for b in tl.bins]
    width = {"hour": 1 / 24, "day": 1.0, "week": 7.0}[tl.bin] * 0.9
    fig, ax = _figure(8, 3.2)
    ax.bar(xs, [b.exchanges for b in tl.bins], width=width, align="edge", color="#4a6fa5", label="exchanges")
    ax.set_ylabel(f"exchanges per {tl.bin}")
    ax2 = ax.twinx()
    ax2.plot(
        [x + timedelta(days=width / 2) for x in xs if x is not None],
        [b.completion_tokens for b in tl.bins],
        color="#c0392b",
        linewidth=1.2,
        label="tokens received",
    )
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("tokens received")
    seen = set()
    for t, kind, _what in _events(ev):
        lab = ("monitor alert" if kind == "alert" else "enforcement action") if kind not in seen else None
        seen.add(kind)
        ax.axvline(
            t,
            color="#e67e22" if kind == "alert" else "#000",
            linestyle="--" if kind == "alert" else "-",
            linewidth=1,
            label=lab,
        )
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M" if tl.bin == "hour" else "%Y-%m-%d"))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    ax.set_xlabel("time (UTC)")
    return _svg(fig)


Series = tuple[str, dict[str, Any], list[tuple[int, float]]]


def _curve_series(ev: Evidence) -> tuple[list[Series], float | None]:
    """The p-value curves of the scans and the single points of their control models, and the threshold."""
    series: list[Series] = []
    alpha = None
    for s in ev.scans:
        ctl = s.role == "control"
        if not ctl:
            alpha = alpha or s.alpha
        for fld, what in (("p_value", "service-wide key"), ("best_account_p", "best account's key")):
            pts = [(c.tokens, max(getattr(c, fld), 1e-300)) for c in s.curve if getattr(c, fld) is not None]
            if pts:
                style: dict[str, Any] = (
                    {"linestyle": ":", "linewidth": 1.5} if ctl else {"color": "#c0392b", "linewidth": 2}
                )
                if fld == "best_account_p":
                    style["linestyle"] = "--" if not ctl else "-."
                series.append((f"{'control ' if ctl else ''}{s.suspect}: {what}", style, pts))
        for c in s.controls:
            if c.kind == "model" and c.p_value is not None and c.tokens_scored:
                series.append((f"control {c.name}", {"linestyle": "none"}, [(c.tokens_scored, max(c.p_value, 1e-300))]))
    return series, alpha


@_styled
def curve(ev: Evidence) -> str | None:
    """The p-value (log scale, stronger upwards) against the distinct word choices scored, with the threshold."""
    series, alpha = _curve_series(ev)
    if not series:
        return None
    from matplotlib.ticker import LogLocator, NullLocator  # lazy: see _svg

    fig, ax = _figure(8, 3.6)
    for label, style, pts in series:
        ax.plot([t for t, _ in pts], [p for _, p in pts], marker="o" if len(pts) == 1 else None, label=label, **style)
    if alpha:
        ax.axhline(alpha, color="#333", linestyle="--", linewidth=1, label=f"threshold {fmt_p(alpha)}")
    ax.set_yscale("log")
    # p-values span hundreds of decades: a few labelled powers of ten, no minor ticks (thousands of them otherwise)
    ax.yaxis.set_major_locator(LogLocator(base=10.0, numticks=8))
    ax.yaxis.set_minor_locator(NullLocator())
    lowest = min([p for _, _, pts in series for _, p in pts] + ([alpha] if alpha else []))
    ax.set_ylim(1.0, lowest / 10)  # 1 at the bottom, stronger evidence higher up
    ax.set_xlabel("distinct word choices scored")
    ax.set_ylabel("p-value (log scale, stronger upwards)")
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _svg(fig)


@_styled
def risk(ev: Evidence) -> str | None:
    """The monitor's risk score of each account at each alert, with the enforcement actions."""
    pts: dict[str, list[tuple[datetime, float]]] = {}
    for a in ev.monitor.alerts:
        t, r = a.at, a.risk
        if t is not None and r is not None:
            pts.setdefault(str(a.get("account_id")), []).append((t, r))
    if not pts:
        return None
    fig, ax = _figure(8, 3)
    for acct, series in sorted(pts.items()):
        series.sort()
        ax.plot([t for t, _ in series], [r for _, r in series], marker="o", label=acct)
    labelled = False
    for t, kind, _ in _events(ev):
        if kind == "action":
            ax.axvline(t, color="#000", linewidth=1, label=None if labelled else "enforcement action")
            labelled = True
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("risk")
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.autofmt_xdate()
    return _svg(fig)


def all_plots(ev: Evidence) -> dict[str, str | None]:
    """Every plot of the report by name (``timeline``, ``curve``, ``risk``); ``None`` where there is nothing."""
    return {"timeline": timeline(ev), "curve": curve(ev), "risk": risk(ev)}


__all__ = ["all_plots", "curve", "risk", "timeline"]
