"""``report.html`` from the evidence's JSON alone, through Jinja2 templates with autoescaping on.

The templates ship in ``templates/`` (``report.html`` includes one template per section, ``style.css`` and an
empty ``letterhead.html``). A directory given as ``template_dir`` comes first: a file there replaces the shipped
one of the same name, so an installation can put its letterhead on the report (``letterhead.html``), restyle it
(``style.css``) or change any section; the shipped templates stay reachable as ``builtin/<name>``, so a
``report.html`` of one's own can ``{% extends "builtin/report.html" %}`` and override a block.

Templates see the typed evidence as ``ev`` and write every value of it through ``f(*path, fmt=...)``, which sets
the value in a ``<span data-field="path" data-value="json">`` naming its place in the JSON: the page cannot show a
number the JSON does not hold, and a reader (or a test) can check one against the other.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from antidistill.errors import InputError
from antidistill.forensics.report import plots
from antidistill.forensics.report.evidence import Evidence, lookup, num, parse_time
from antidistill.forensics.report.verdict import control_table
from antidistill.forensics.report.wording import fmt_p

#: exchanges listed in the HTML appendix (the JSON holds the rest)
MAX_HTML_EXCHANGES = 500
#: the page template; everything else is included from it
PAGE = "report.html"

_BUILTIN = jinja2.PackageLoader("antidistill.forensics.report", "templates")


def environment(template_dir: str | os.PathLike[str] | None = None) -> jinja2.Environment:
    """The Jinja2 environment of the report: ``template_dir`` first (if given), then the shipped templates.

    Raises:
        InputError: ``template_dir`` is not a directory.
    """
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        d = Path(template_dir)
        if not d.is_dir():
            raise InputError(f"template directory not found: {d}")
        loaders.append(jinja2.FileSystemLoader(d))
    loaders += [_BUILTIN, jinja2.PrefixLoader({"builtin": _BUILTIN})]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["thousands"] = lambda n: f"{n:,}"
    return env


def check_templates(template_dir: str | os.PathLike[str] | None = None) -> None:
    """Load the page template and what it includes, so that a broken template fails before anything is computed.

    Raises:
        InputError: ``template_dir`` is not a directory, or a template there does not compile.
    """
    env = environment(template_dir)
    try:
        for name in env.list_templates(extensions=["html", "css"]):
            if not name.startswith("builtin/"):
                env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"template {exc.filename or exc.name}, line {exc.lineno}: {exc.message}") from None
    except UnicodeDecodeError:
        raise InputError(f"a template in {template_dir} is not UTF-8 text") from None


class Fields:
    """Writes values of the evidence's JSON as HTML, each in a span naming its JSON path.

    Args:
        data: the evidence's JSON (``report.json`` as read back).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def __call__(self, *path: Any, fmt: str = "text") -> Markup:
        """The value at ``path`` (parts joined by dots), formatted as ``fmt`` (see :func:`format_value`).

        Templates pass a key that comes from the data as a part of its own (``f("accounts", i, "metadata", k)``):
        joined with ``~`` in a template, it would be HTML-escaped before it got here and name another field.
        """
        where = ".".join(str(p) for p in path)
        value = lookup(self.data, where)
        raw = json.dumps(value, ensure_ascii=False, sort_keys=True)
        return Markup('<span data-field="{}" data-value="{}">{}</span>').format(where, raw, format_value(value, fmt))


def format_value(value: Any, fmt: str = "text") -> Markup:
    """A JSON value as HTML (escaped).

    ``fmt``: ``text``, ``int``, ``num3`` (three decimals), ``p``, ``pct``, ``code``, ``time``, ``bool``."""
    if value is None:
        return Markup("-")
    if fmt == "int" and isinstance(value, int | float):
        return Markup(f"{int(value):,}")
    if fmt == "p":
        return _p_html(value)
    if fmt == "num3" and isinstance(value, int | float):
        return escape(f"{value:.3f}")
    if fmt == "pct" and isinstance(value, int | float):
        return escape(f"{value:.1%}")
    if fmt == "code":
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        return Markup("<code>{}</code>").format(shown)
    if fmt == "time" and isinstance(value, str):
        t = parse_time(value)
        return escape(t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else value)
    if fmt == "bool":
        return Markup("yes" if value else "no")
    if isinstance(value, dict | list):
        return escape(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return _powers(str(escape(str(value))))


def _powers(html_text: str) -> Markup:
    """Escaped text with ``10^k`` (as the JSON's sentences write powers of ten) set as superscripts."""
    return Markup(re.sub(r"10\^(-?\d+)", lambda m: f"10<sup>{m.group(1).replace('-', '−')}</sup>", html_text))


def _p_html(p: Any) -> Markup:
    v = num(p)
    if v is None:
        return Markup("-")
    return _powers(str(escape(fmt_p(v))))


def render_html(evidence: Evidence | Mapping[str, Any], template_dir: str | os.PathLike[str] | None = None) -> str:
    """The HTML report, rendered from the evidence's JSON alone.

    Args:
        evidence: the evidence, typed or as its JSON (``report.json`` as read back); it must hold its summary.
        template_dir: a directory whose templates take precedence over the shipped ones (see the module).

    Raises:
        ValueError: the evidence has no summary.
        InputError: ``template_dir`` is not a directory, or a template there fails.
    """
    data = evidence.to_json() if isinstance(evidence, Evidence) else evidence
    ev = Evidence.from_json(data)
    if ev.summary is None:
        raise ValueError("the evidence has no summary (gather it with antidistill.forensics.report.gather)")
    makers = {"timeline": plots.timeline, "curve": plots.curve, "risk": plots.risk}
    context = {
        "ev": ev,
        "f": Fields(data),
        "plot": lambda name: makers[name](ev),
        "controls": control_table(ev),
        "max_html_exchanges": MAX_HTML_EXCHANGES,
    }
    env = environment(template_dir)
    if template_dir is None:  # the shipped templates: a failure is a bug, with its traceback
        return env.get_template(PAGE).render(context)
    try:
        return env.get_template(PAGE).render(context)
    except jinja2.TemplateError as exc:
        raise InputError(f"the report's templates (with {template_dir}) failed: {type(exc).__name__}: {exc}") from None


__all__ = ["MAX_HTML_EXCHANGES", "Fields", "check_templates", "environment", "format_value", "render_html"]
