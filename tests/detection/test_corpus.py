"""The human-written corpus: troff, info and docstring extraction, packing, deduplication, errors."""

from __future__ import annotations

import gzip

import pytest

from antidistill.detection.corpus import (
    CorpusError,
    default_sources,
    docstring_paragraphs,
    human_sample_records,
    human_samples,
    info_to_documents,
    iter_human_samples,
    plain_paragraphs,
    troff_to_paragraphs,
    troff_unescape,
)

PROSE = (
    "The program reads the file given on the command line and writes a summary of it to the standard "
    "output. It is meant to be used in scripts, where the exit status tells whether the file was read."
)

MAN_PAGE = r""".\" a comment that must vanish
.de XX
.  this macro body is not text
..
.TH DEMO 1 "2024" "demo 1.0"
.SH NAME
demo \- show how \fBtroff\fR is turned into prose
.SH SYNOPSIS
.nf
demo [\-v] FILE
.fi
.SH DESCRIPTION
.B demo
reads the \fIfile\fP given on the command line and writes a summary\(emin plain words\(emto the
standard output.
It is meant for scripts; see
.BR wc (1)
for a simpler tool.
.if n \{\
.  this conditional body is not text
.\}
.TP
\fB\-v\fR, \fB\-\-verbose\fR
print more details about what the program does while it works
.PP
The \*(L"exit status\*(R" tells whether the file was read \[u00E9]t\['e]
.EX
demo \-v notes.txt
.EE
"""


def test_troff_to_paragraphs_keeps_prose_only():
    paras = troff_to_paragraphs(MAN_PAGE)
    text = "\n".join(paras)
    assert "demo reads the file given on the command line and writes a summary\u2014in plain words\u2014to" in text
    assert "see wc(1) for a simpler tool." in text
    assert "print more details about what the program does while it works" in text
    assert "\u201cexit status\u201d" in text and "\u00e9t\u00e9" in text
    for gone in ("comment", "macro body", "conditional body", "notes.txt", "FILE", "--verbose", "NAME", "\\"):
        assert gone not in text, gone


def test_troff_redirects_and_mdoc_pages_give_nothing():
    assert troff_to_paragraphs(".so man1/other.1\n") == []
    assert troff_to_paragraphs(".Dd May 1, 2020\n.Dt DEMO 1\n.Sh NAME\n.Nm demo\n") == []


def test_troff_unescape():
    assert troff_unescape(r"\fBbold\fR \-\-all \e \(bu \s-1small\s0 \&.") == "bold --all \\ \u2022 small ."


def test_info_nodes_drop_menus_and_examples():
    info = (
        "preamble\n\x1f\nFile: demo.info,  Node: Top,  Next: Use\n\nDemo\n****\n\n" + PROSE + "\n\n"
        "     demo --example\n\n* Menu:\n\n* Use::   How to use it.\n\x1f\nFile: demo.info,  Node: Use\n\n"
        + PROSE.upper()
        + "\n"
    )
    docs = info_to_documents(info)
    assert len(docs) == 2
    assert docs[0] == ["Demo", PROSE]
    assert docs[1] == [PROSE.upper()]


def test_docstrings_without_doctests_or_code():
    src = '''"""Module summary line.

Second paragraph of the module.
"""

def f():
    """Do a thing.

    >>> f()
    1

    Indented::

        code here
    """

class C:
    """A class."""
    def m(self):
        """A method."""
'''
    assert docstring_paragraphs(src) == [
        "Module summary line.",
        "Second paragraph of the module.",
        "Do a thing.",
        "Indented::",
        "A class.",
        "A method.",
    ]
    assert docstring_paragraphs("def broken(:\n") == []


def test_debian_copyright_syntax_is_undone():
    text = "License: GPL-2+\n This is free software.\n .\n Second paragraph here.\n"
    assert plain_paragraphs(text) == ["GPL-2+", "This is free software.", "Second paragraph here."]
    assert plain_paragraphs("Files: *\nCopyright: 2001 Jane Doe\n") == ["*", "2001 Jane Doe"]


def _letters(n: int) -> str:
    """A distinct alphabetic word per number (the shingles of the near-duplicate filter ignore digits)."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out += chr(97 + r)
        if n == 0:
            return out


def _fake_sources(tmp_path, copies=1, pages=30):
    man = tmp_path / "share" / "man" / "man1"
    man.mkdir(parents=True)
    for i in range(pages):
        body = "\n.PP\n".join(
            PROSE + " " + " ".join(f"the {_letters(1000 * i + 50 * k + j)} of it" for j in range(15)) + "."
            for k in range(8)
        )
        for c in range(copies):
            with gzip.open(man / f"tool{i}-{c}.1.gz", "wt") as f:
                f.write(f".TH TOOL{i} 1\n.SH DESCRIPTION\n{body}\n")
    return default_sources(tmp_path / "share", tmp_path / "no-stdlib")


def test_samples_are_packed_deduplicated_and_deterministic(tmp_path):
    caps = {"max_per_family": 1000, "max_per_document": 1000}
    sources = _fake_sources(tmp_path, copies=3)
    samples = list(iter_human_samples(300, 800, seed=0, sources=sources, **caps))
    assert samples, "the fake man pages should give samples"
    assert all(300 <= len(s.text) <= 800 and s.source == "man" for s in samples)
    assert len({s.text for s in samples}) == len(samples)
    # every page is installed three times, and every paragraph repeats PROSE: each paragraph is used once,
    # so the copies add (almost) nothing; the sample boundaries shift a little because the length targets do
    paragraphs = [p for s in samples for p in s.text.split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs))
    single = list(iter_human_samples(300, 800, seed=0, sources=_fake_sources(tmp_path / "one"), **caps))
    assert abs(len(samples) - len(single)) <= 0.05 * len(single)
    again = list(iter_human_samples(300, 800, seed=0, sources=sources, **caps))
    assert [s.text for s in again] == [s.text for s in samples]
    other = list(iter_human_samples(300, 800, seed=1, sources=sources, **caps))
    assert [s.text for s in other] != [s.text for s in samples]


def test_not_enough_text_is_a_clear_error(tmp_path):
    sources = _fake_sources(tmp_path, pages=2)
    with pytest.raises(CorpusError, match=r"only \d+ distinct human-written samples"):
        human_sample_records(10_000, sources=sources)
    with pytest.raises(ValueError, match="min_chars"):
        human_samples(1, min_chars=500, max_chars=100)
    assert human_samples(0, sources=sources) == []
