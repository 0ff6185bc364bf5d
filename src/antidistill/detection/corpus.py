"""Human-written English text found on this machine: null samples for false-positive measurements.

A false-positive rate is only evidence if the innocent texts were written without any of our keys. Text that
no model wrote is already on every Linux machine with Python: the interpreter's standard library (docstrings),
the manual pages, the GNU info manuals, and the licence and copyright files of the installed packages. This
module turns that text into paragraph-sized samples at run time; none of it is stored in the repository.

How a sample is made
--------------------
* **Sources**, each read in a fixed, seeded order: ``stdlib`` (module, class and function docstrings of the
  Python standard library, via :mod:`ast`; doctest and code lines dropped), ``man`` (English manual pages,
  ``/usr/share/man/man*/``; troff requests dropped, escapes decoded, no-fill blocks and tables dropped; mdoc
  and ``.so`` redirect pages skipped), ``info`` (GNU info manuals, one document per node; menus and indented
  examples dropped) and ``licenses`` (``/usr/share/common-licenses/*`` and ``/usr/share/doc/*/copyright``).
* **Families**: files are grouped into families (``gcloud_compute_...`` man pages are one family, as are the
  modules of one stdlib package or the nodes of one info manual) and read round-robin across families and
  sources, so that no single generator of near-identical pages (16,000 gcloud man pages on some machines)
  dominates. Each family and each document contribute at most a fixed number of samples.
* **Paragraphs** are packed, in document order, into samples of ``min_chars``..``max_chars`` characters (a
  target length drawn per sample), ending at a paragraph or sentence boundary. Samples that do not look like
  English prose (too few letters, too few function words) are dropped.
* **Deduplication**: a paragraph is dropped when half or more of its word 5-grams were already used (licence
  boilerplate repeated in hundreds of copyright files, shared "see also" or "global flags" sections), and a
  sample is dropped when its normalized text was already produced.

The result is deterministic for a given machine and seed: sorted paths, seeded shuffles, no salted hashes.
Run ``python -m antidistill.detection.corpus`` to see how many samples this machine yields.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import functools
import gzip
import hashlib
import os
import random
import re
import sys
import sysconfig
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antidistill.errors import AntidistillError, InputError

DEFAULT_MIN_CHARS = 600
DEFAULT_MAX_CHARS = 1600
MAX_PER_DOCUMENT = 6
MAX_PER_FAMILY = 40
NEAR_DUP_CONTAINMENT = 0.5
SHINGLE = 5
MAX_FILE_BYTES = 4 << 20


class CorpusError(AntidistillError):
    """This machine does not hold enough human-written text for the number of samples asked for."""


@dataclass(frozen=True)
class Sample:
    """One human-written sample: its text and where it came from (``source`` and a file or node name)."""

    text: str
    source: str
    name: str


# ---- text helpers ---------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "either",
        "every",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "however",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "may",
        "might",
        "more",
        "most",
        "must",
        "my",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "shall",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "upon",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    }
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
_SPACES = re.compile(r"\s+")
_NON_LETTERS = re.compile(r"[\W\d_]+")


def _norm_space(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def looks_like_prose(
    text: str, min_stopword_share: float = 0.2, min_letter_share: float = 0.75, words: list[str] | None = None
) -> bool:
    """Rough test for English prose: mostly letters, and the share of English function words prose has."""
    chars = _SPACES.sub("", text)
    if not chars or len(_NON_LETTERS.sub("", chars)) < min_letter_share * len(chars):
        return False
    words = _WORD.findall(text) if words is None else words
    if len(words) < 8:
        return False
    stop = sum(1 for w in words if w.lower() in _STOPWORDS)
    return stop >= min_stopword_share * len(words)


def _read_bytes(path: Path) -> bytes | None:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read(MAX_FILE_BYTES)
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES)
    except (OSError, EOFError, zlib.error):
        return None


def _read_text(path: Path) -> str | None:
    raw = _read_bytes(path)
    if raw is None or b"\x00" in raw[:4096]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its lines joined by single spaces."""
    return [p for p in (_norm_space(b) for b in re.split(r"\n\s*\n", text)) if p]


# ---- troff (manual pages) ---------------------------------------------------------------------------------

_TROFF_CHARS = {
    "em": "\u2014",
    "en": "\u2013",
    "hy": "-",
    "mi": "-",
    "bu": "\u2022",
    "lq": "\u201c",
    "rq": "\u201d",
    "oq": "\u2018",
    "cq": "\u2019",
    "aq": "'",
    "dq": '"',
    "co": "\u00a9",
    "rg": "\u00ae",
    "tm": "\u2122",
    "mu": "\u00d7",
    "di": "\u00f7",
    "de": "\u00b0",
    ">=": "\u2265",
    "<=": "\u2264",
    "!=": "\u2260",
    "->": "\u2192",
    "<-": "\u2190",
    "+-": "\u00b1",
    "sc": "\u00a7",
    "ps": "\u00b6",
    "dg": "\u2020",
    "ru": "_",
    "ul": "_",
    "ba": "|",
    "br": "|",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "sl": "/",
    "ga": "`",
    "aa": "\u00b4",
    "fm": "\u2032",
    "sq": "\u25a1",
    "Fo": "\u00ab",
    "Fc": "\u00bb",
    "at": "@",
    "sh": "#",
    "Do": "$",
    "lB": "[",
    "rB": "]",
    "lC": "{",
    "rC": "}",
    "la": "\u27e8",
    "ra": "\u27e9",
    "eq": "=",
    "pl": "+",
    "**": "*",
    "'e": "\u00e9",
    "`e": "\u00e8",
    "'a": "\u00e1",
    ":o": "\u00f6",
    ":u": "\u00fc",
    ":a": "\u00e4",
    "ss": "\u00df",
    ",c": "\u00e7",
    "~n": "\u00f1",
    "'E": "\u00c9",
    "char46": ".",
    "char92": "\\",
    "char39": "'",
    "char34": '"',
    "char45": "-",
    "char96": "`",
}
# strings defined by pod2man's and groff's preambles that carry text
_TROFF_STRINGS = {
    "--": "\u2014",
    'L"': "\u201c",
    'R"': "\u201d",
    "C`": '"',
    "C'": '"',
    "C+": "C++",
    "PI": "\u03c0",
    "Tm": "\u2122",
    "R": "\u00ae",
    "lq": "\u201c",
    "rq": "\u201d",
    "Lq": "\u201c",
    "Rq": "\u201d",
}
_TROFF_SIMPLE = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    "E": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "'": "'",
    "`": "`",
    ".": ".",
    "t": " ",
    "_": "_",
    "%": "",
    "&": "",
    "|": "",
    "^": "",
    ",": "",
    "/": "",
    ":": "",
    "c": "",
    "a": "",
    "d": "",
    "u": "",
    "r": "",
    "p": "",
    "{": "",
    "}": "",
    "!": "",
    "?": "",
    ")": "",
    "j": "",
}
_TROFF_ESCAPE = re.compile(
    r"""\\(?:
        (?P<font>f(?:\[[^\]]*\]|\(..|.))
      | (?P<size>s(?:[+-]?\(\d\d|[+-]?\[[^\]]*\]|'[^']*'|[+-]?[1-3]\d|[+-]?\d))
      | \*(?:\[(?P<str_l>[^\]]*)\]|\((?P<str_2>..)|(?P<str_1>.))
      | (?P<reg>n[+-]?(?:\[[^\]]*\]|\(..|.))
      | (?P<quoted>[hvwoLlDXZbNxRSBACHYVT]'[^']*')
      | \((?P<ch_2>..)
      | \[(?P<ch_l>[^\]]*)\]
      | (?P<mark>[kzgmMY$F](?:\[[^\]]*\]|\(..|.))
      | (?P<simple>.)
    )""",
    re.X,
)
_TROFF_COMMENT = re.compile(r'^((?:[^\\]|\\.)*?)\\["#].*$')
_TROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
_TROFF_FONT_SPACED = {"B", "I", "SM", "SB"}
_TROFF_FONT_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_TROFF_BREAK = {"PP", "LP", "P", "TP", "TQ", "IP", "HP", "SH", "SS", "sp", "RS", "RE", "bp", "TH", "PD", "in"}
_TROFF_NOFILL = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "PS": "PE", "Vb": "Ve", "DS": "DE"}
_TROFF_BLOCK = {"de", "de1", "dei", "am", "am1", "ami", "ig"}


def _troff_char(name: str) -> str:
    if name in _TROFF_CHARS:
        return _TROFF_CHARS[name]
    m = re.fullmatch(r"u([0-9A-Fa-f]{4,6})(?:_.*)?", name)
    if m:
        try:
            return chr(int(m.group(1), 16))
        except ValueError:
            return ""
    return ""


def _troff_unescape_match(m: re.Match[str]) -> str:
    if m.group("ch_2") is not None:
        return _troff_char(m.group("ch_2"))
    if m.group("ch_l") is not None:
        return _troff_char(m.group("ch_l"))
    for g in ("str_l", "str_2", "str_1"):
        if m.group(g) is not None:
            return _TROFF_STRINGS.get(m.group(g), "")
    if m.group("mark") is not None:
        return m.group("mark")[1:] if m.group("mark")[0] == "z" else ""
    s = m.group("simple")
    if s is not None:
        return _TROFF_SIMPLE.get(s, s)
    return ""  # fonts, sizes, registers, quoted-argument escapes


def troff_unescape(text: str) -> str:
    """Decode troff escapes to plain text (fonts and sizes dropped, special characters decoded)."""
    return _TROFF_ESCAPE.sub(_troff_unescape_match, text)


def _troff_args(rest: str) -> list[str]:
    out = []
    for m in _TROFF_ARG.finditer(rest):
        out.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
    return out


def troff_to_paragraphs(source: str) -> list[str]:  # noqa: C901
    """Plain-prose paragraphs of a man(7) page. mdoc pages and ``.so`` redirects give no paragraphs."""
    lines = source.splitlines()
    head = [ln for ln in lines[:40] if ln.strip() and not ln.startswith(('.\\"', "'\\\"", '\\"'))]
    if head and head[0].startswith(".so "):
        return []
    if any(ln.startswith((".Dd", ".Sh ")) for ln in lines[:200]):
        return []  # mdoc: a different macro language; not worth a second parser here
    paras: list[str] = []
    cur: list[str] = []

    def brk() -> None:
        if cur:
            paras.append(_norm_space(" ".join(cur)))
            cur.clear()

    block_end: str | None = None  # inside .de/.ig: the line that ends it
    nofill_end: str | None = None  # inside .nf/.EX/.TS: the request that ends it
    braces = 0  # inside a multi-line conditional body
    skip_text = 0  # text lines to drop (the tag line after .TP, the heading after a bare .SH)
    for raw in lines:
        if block_end is not None:
            if raw.strip() == block_end or raw.startswith(block_end + " "):
                block_end = None
            continue
        m = _TROFF_COMMENT.match(raw)
        line = m.group(1) if m else raw
        if braces > 0:
            braces += line.count("\\{") - line.count("\\}")
            continue
        if line.startswith((".", "'")):
            body = line[1:].lstrip()
            req, _, rest = body.partition(" ")
            req = req.strip()
            if req in _TROFF_BLOCK:
                args = _troff_args(rest)
                block_end = "." + args[0] if req == "ig" and args else ".."
                continue
            if req in ("if", "ie", "el", "while"):
                braces = max(0, line.count("\\{") - line.count("\\}"))
                continue
            if nofill_end is not None:
                if req == nofill_end:
                    nofill_end = None
                continue
            if req in _TROFF_NOFILL:
                brk()
                nofill_end = _TROFF_NOFILL[req]
                continue
            if req in _TROFF_FONT_SPACED or req in _TROFF_FONT_ALTERNATING:
                args = _troff_args(rest)
                if not args:
                    continue  # the text is on the next line
                if skip_text:
                    skip_text -= 1
                    continue
                joiner = " " if req in _TROFF_FONT_SPACED else ""
                cur.append(troff_unescape(joiner.join(args)))
                continue
            if req in _TROFF_BREAK:
                brk()
                if req == "TP" or req == "TQ" or (req in ("SH", "SS") and not rest.strip()):
                    skip_text = 1
                continue
            continue  # any other request: formatting only
        if nofill_end is not None:
            continue
        if not line.strip():
            brk()
            continue
        if skip_text:
            skip_text -= 1
            continue
        cur.append(troff_unescape(line))
    brk()
    return [p for p in paras if p]


# ---- info manuals -----------------------------------------------------------------------------------------


def info_to_documents(source: str) -> list[list[str]]:
    """One paragraph list per node of a GNU info file (menus, indented examples and tag tables dropped)."""
    docs = []
    for node in source.split("\x1f"):
        lines = node.strip("\n").splitlines()
        if not lines or not lines[0].startswith("File:"):
            continue
        body = []
        in_menu = False
        for ln in lines[1:]:
            if ln.startswith("* Menu:"):
                in_menu = True
                continue
            if in_menu and (ln.startswith("* ") or ln.startswith(" ") or not ln.strip()):
                continue
            in_menu = False
            if re.fullmatch(r"[*=\-.]{3,}", ln.strip()):  # title underline
                body.append("")
                continue
            body.append(ln)
        paras = []
        for block in re.split(r"\n\s*\n", "\n".join(body)):
            blines = [ln for ln in block.splitlines() if ln.strip()]
            if not blines or all(ln.startswith("     ") for ln in blines):  # an @example block
                continue
            paras.append(_norm_space(" ".join(blines)))
        docs.append([p for p in paras if p])
    return docs


# ---- python standard library ------------------------------------------------------------------------------

_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}


def _definitions(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Classes and functions in source order, nested ones included (statements only: no expression walk)."""
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
            yield from _definitions(node.body)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for name in ("body", "orelse", "finalbody"):
                yield from _definitions(getattr(node, name, []))
            for handler in getattr(node, "handlers", []):
                yield from _definitions(handler.body)


def docstring_paragraphs(source: str) -> list[str]:
    """Prose paragraphs of every docstring in a Python module, in source order (doctests and code dropped)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *_definitions(tree.body)]
    paras: list[str] = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        for block in re.split(r"\n\s*\n", doc):
            blines = block.splitlines()
            if any(ln.lstrip().startswith((">>>", "...", "$ ")) for ln in blines):
                continue
            if any(ln.startswith(("    ", "\t")) for ln in blines[1:]) or block.startswith(("    ", "\t")):
                continue  # indented: a code block or a definition list
            text = _norm_space(block)
            if text:
                paras.append(text)
    return paras


# ---- licences and copyright files -------------------------------------------------------------------------


def plain_paragraphs(source: str) -> list[str]:
    """Paragraphs of plain text; Debian ``copyright`` syntax (field names, ``.`` blank lines) is undone."""
    out_lines = []
    for ln in source.splitlines():
        s = ln.strip()
        if s == ".":
            out_lines.append("")
            continue
        m = re.match(r"^([A-Z][A-Za-z-]*):(\s|$)", ln)
        if m:  # a field: its one-line value is a paragraph of its own, continuation lines the next one
            out_lines += ["", ln[m.end() :], ""]
            continue
        out_lines.append(ln)
    return _split_paragraphs("\n".join(out_lines))


# ---- sources ----------------------------------------------------------------------------------------------

Loader = Callable[[Path], list[list[str]]]


@dataclass(frozen=True)
class _Source:
    name: str
    loader: Loader
    families: dict[str, list[Path]]


def _family(stem: str) -> str:
    return re.split(r"[-_.:]", stem, maxsplit=1)[0].lower() or stem


def _man_loader(path: Path) -> list[list[str]]:
    text = _read_text(path)
    return [troff_to_paragraphs(text)] if text else []


def _info_loader(path: Path) -> list[list[str]]:
    text = _read_text(path)
    return info_to_documents(text) if text else []


def _stdlib_loader(path: Path) -> list[list[str]]:
    text = _read_text(path)
    return [docstring_paragraphs(text)] if text else []


def _plain_loader(path: Path) -> list[list[str]]:
    text = _read_text(path)
    return [plain_paragraphs(text)] if text else []


def _files(directory: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """Regular files (symbolic links excluded: they duplicate other files) matching ``pattern``, sorted."""
    out = []
    stack = [directory]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_symlink():
                    continue
                if e.is_dir():
                    if recursive:
                        stack.append(Path(e.path))
                elif e.is_file() and fnmatch.fnmatchcase(e.name, pattern):
                    out.append(Path(e.path))
            except OSError:
                continue
    return sorted(out, key=str)


@functools.lru_cache(maxsize=4)
def default_sources(share: Path = Path("/usr/share"), stdlib: Path | None = None) -> tuple[_Source, ...]:
    """The text sources of this machine (any that is missing is simply empty). Listed once per process."""
    stdlib = stdlib if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    sources = []

    fam: dict[str, list[Path]] = {}
    if stdlib.is_dir():
        for p in _files(stdlib, "*.py", recursive=True):
            rel = p.relative_to(stdlib).parts
            if any(part in _STDLIB_SKIP or part.startswith("config-") for part in rel):
                continue
            fam.setdefault(_family(rel[0].removesuffix(".py")), []).append(p)
    sources.append(_Source("stdlib", _stdlib_loader, fam))

    fam = {}
    man = share / "man"
    if man.is_dir():
        for section in sorted(d for d in man.glob("man*") if d.is_dir()):
            for p in _files(section):
                fam.setdefault(_family(p.name), []).append(p)
    sources.append(_Source("man", _man_loader, fam))

    fam = {}
    info = share / "info"
    if info.is_dir():
        for p in _files(info, "*.info*"):
            fam.setdefault(p.name.split(".info")[0], []).append(p)
    sources.append(_Source("info", _info_loader, fam))

    fam = {}
    lic = share / "common-licenses"
    if lic.is_dir():
        fam["common-licenses"] = _files(lic)
    doc = share / "doc"
    if doc.is_dir():
        for pkg in sorted(os.listdir(doc)):
            p = doc / pkg / "copyright"
            if p.is_file() and not p.is_symlink():
                fam.setdefault(pkg, []).append(p)
    sources.append(_Source("licenses", _plain_loader, fam))
    return tuple(sources)


def _documents(
    sources: Iterable[_Source], rng: random.Random
) -> Iterator[tuple[str, str, Callable[[], list[list[str]]]]]:
    """(source, family, loader), round-robin over every (source, family); every list seeded-shuffled."""
    queues = []
    for src in sources:
        for fam_name in sorted(src.families):
            paths = list(src.families[fam_name])
            rng.shuffle(paths)
            queues.append((src, fam_name, paths))
    rng.shuffle(queues)
    while queues:
        remaining = []
        for src, fam_name, paths in queues:
            p = paths.pop()
            yield src.name, f"{fam_name}", functools.partial(src.loader, p)
            if paths:
                remaining.append((src, fam_name, paths))
        queues = remaining


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph longer than ``max_chars`` as sentence runs of at most ``max_chars`` (overlong sentences
    dropped)."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    out, cur = [], ""
    for sent in _SENTENCE_END.split(paragraph):
        if len(sent) > max_chars:
            if cur:
                out.append(cur)
            cur = ""
            continue
        if cur and len(cur) + 1 + len(sent) > max_chars:
            out.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}" if cur else sent
    if cur:
        out.append(cur)
    return out


def _shingles(words: list[str], vocab: dict[str, int]) -> set[int]:
    """Hashes of the word 5-grams (words numbered in order of first sight: int tuples hash deterministically,
    unlike strings, whose hashes are salted per process)."""
    ids = [vocab.setdefault(w.lower(), len(vocab)) for w in words]
    if len(ids) < SHINGLE:
        return {hash(tuple(ids))} if ids else set()
    return {hash(t) for t in zip(*(ids[i:] for i in range(SHINGLE)), strict=False)}


def _fingerprint(text: str) -> bytes:
    norm = " ".join(w.lower() for w in re.findall(r"\w+", text))
    return hashlib.blake2b(norm.encode(), digest_size=16).digest()


def iter_human_samples(  # noqa: C901
    min_chars: int = DEFAULT_MIN_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    seed: int = 0,
    max_per_document: int = MAX_PER_DOCUMENT,
    max_per_family: int = MAX_PER_FAMILY,
    sources: Iterable[_Source] | None = None,
) -> Iterator[Sample]:
    """Distinct human-written samples, lazily, in a deterministic order for this machine and ``seed``."""
    if not 0 < min_chars <= max_chars:
        raise InputError(f"need 0 < min_chars <= max_chars, got {min_chars}, {max_chars}")
    rng = random.Random(seed)
    seen_shingles: set[int] = set()
    vocab: dict[str, int] = {}
    seen_samples: set[bytes] = set()
    per_family: dict[tuple[str, str], int] = {}
    for source, family, load in _documents(sources if sources is not None else default_sources(), rng):
        if per_family.get((source, family), 0) >= max_per_family:
            continue
        for paragraphs in load():
            made = 0
            cur: list[str] = []
            size = 0
            target = rng.randint(min_chars, max_chars)
            for para in paragraphs:
                if per_family.get((source, family), 0) >= max_per_family or made >= max_per_document:
                    break
                words = _WORD.findall(para)
                if len(para) < 20 or len(words) < 3 or len(para.split()) < 3:
                    continue
                if len(para) > 80 and not looks_like_prose(para, 0.1, 0.6, words):
                    continue
                sh = _shingles(words, vocab)
                if not sh or len(sh & seen_shingles) >= NEAR_DUP_CONTAINMENT * len(sh):
                    continue  # boilerplate seen before (or a paragraph without words)
                seen_shingles |= sh
                ready: list[str] = []
                for piece in _split_long(para, max_chars):
                    if size and size + 2 + len(piece) > max_chars:
                        # the target cannot be reached without overshooting: close the sample here
                        if size >= min_chars:
                            ready.append("\n\n".join(cur))
                        cur, size = [], 0
                        target = rng.randint(min_chars, max_chars)
                    cur.append(piece)
                    size += len(piece) + (2 if size else 0)
                    if size >= target:
                        ready.append("\n\n".join(cur))
                        cur, size = [], 0
                        target = rng.randint(min_chars, max_chars)
                for text in ready:
                    fp = _fingerprint(text)
                    if fp in seen_samples or not looks_like_prose(text):
                        continue
                    seen_samples.add(fp)
                    made += 1
                    per_family[(source, family)] = per_family.get((source, family), 0) + 1
                    yield Sample(text, source, family)


def human_sample_records(
    n: int, min_chars: int = DEFAULT_MIN_CHARS, max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0, **kwargs: Any
) -> list[Sample]:
    """``n`` distinct samples with their sources, shuffled with ``seed``. Raises :class:`CorpusError` if this
    machine holds fewer."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    out: list[Sample] = []
    for s in iter_human_samples(min_chars, max_chars, seed, **kwargs):
        if len(out) >= n:
            break
        out.append(s)
    if len(out) < n:
        raise CorpusError(
            f"this machine holds only {len(out)} distinct human-written samples of {min_chars}-{max_chars} "
            f"characters, {n} were asked for (sources: the Python standard library's docstrings, "
            "/usr/share/man, /usr/share/info, /usr/share/common-licenses and /usr/share/doc/*/copyright; "
            "minimal container images often strip the last four)"
        )
    random.Random(seed).shuffle(out)
    return out


def human_samples(
    n: int, min_chars: int = DEFAULT_MIN_CHARS, max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0, **kwargs: Any
) -> list[str]:
    """``n`` distinct human-written English samples of ``min_chars``..``max_chars`` characters.

    Deterministic for this machine and ``seed``. Raises :class:`CorpusError` when the machine holds fewer.

    Example:
        >>> texts = human_samples(3)             # doctest: +SKIP
        >>> all(600 <= len(t) <= 1600 for t in texts)   # doctest: +SKIP
        True
    """
    return [s.text for s in human_sample_records(n, min_chars, max_chars, seed, **kwargs)]


def main(argv: list[str] | None = None) -> None:
    """``python -m antidistill.detection.corpus``: count (or show) the samples this machine yields."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-chars", type=int, default=DEFAULT_MIN_CHARS)
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=0, help="print this many samples instead of counting")
    args = ap.parse_args(argv)
    it = iter_human_samples(args.min_chars, args.max_chars, args.seed)
    if args.show:
        for i, s in zip(range(args.show), it, strict=False):
            sys.stdout.write(f"--- [{i}] {s.source}:{s.name} ({len(s.text)} chars)\n{s.text}\n\n")
        return
    counts: dict[str, int] = {}
    for s in it:
        counts[s.source] = counts.get(s.source, 0) + 1
    total = sum(counts.values())
    sys.stdout.write(
        f"{total} distinct samples of {args.min_chars}-{args.max_chars} chars: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + "\n"
    )


if __name__ == "__main__":
    main()
