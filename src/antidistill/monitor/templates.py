"""Prompt templates: which prompts are the same form with different slots filled in.

A distillation campaign sends thousands of prompts cut from a few templates ("Explain {topic} step by step,
showing all of your reasoning"). Each prompt is normalised (Unicode NFKC, common confusables folded, case
folded, numbers, quoted strings, URLs and long identifiers masked), cut into word shingles (unigrams and
bigrams), and summarised by a small MinHash (Broder 1997, "On the resemblance and containment of documents");
banded LSH (Indyk & Motwani 1998; Leskovec et al., *Mining of Massive Datasets* ch. 3) then finds an earlier
template that resembles it, or the prompt starts a new one.

The MinHash uses datasketch's ``affine32`` permutation scheme with CRC-32 as the shingle hash, computed in one
vectorised numpy step (datasketch's own ``MinHash.update_batch`` gives the same values and is the reference in the
tests; creating a ``MinHash`` object per prompt costs more than the rest of the monitor together). Signatures
are cached by normalised text, since campaigns repeat prompts verbatim too.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import OrderedDict
from itertools import pairwise

import numpy as np
from datasketch import MinHash

from antidistill.errors import InputError

#: permutations and bands: 15 = 5 bands x 3 rows; a pair with Jaccard similarity s shares a band with
#: probability 1 - (1 - s^3)^5: 0.97 at s = 0.8, 0.70 at s = 0.6, 0.13 at s = 0.3, 0.005 at s = 0.1
NUM_PERM = 15
BANDS = 5
ROWS = NUM_PERM // BANDS
SEED = 1

# Latin look-alikes that NFKC leaves alone (Cyrillic, Greek); enough to defeat the usual evasion
_CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "у": "y",
        "х": "x",
        "і": "i",
        "ј": "j",
        "ѕ": "s",
        "А": "a",
        "В": "b",
        "Е": "e",
        "К": "k",
        "М": "m",
        "Н": "h",
        "О": "o",
        "Р": "p",
        "С": "c",
        "Т": "t",
        "Х": "x",
        "α": "a",
        "ο": "o",
        "ν": "v",
        "ρ": "p",
        "τ": "t",
        "Α": "a",
        "Β": "b",
        "Ε": "e",
        "Ο": "o",
        "Ρ": "p",
        "Τ": "t",
        "\u200b": "",
        "\u200c": "",
        "\u200d": "",
        "\ufeff": "",
        "\u00ad": "",
    }
)
# variable parts, masked one kind at a time with plain replacements (a replacement callback costs several times
# more); the cheap membership tests skip the patterns that cannot match
_URL = re.compile(r"https?://\S+|www\.\S+")
# every alternative opens with its quote (the lookbehind of the third comes after it), so the engine skips ahead
# to the next quote instead of trying all three at every position: the same matches, several times faster
_STR = re.compile(r"\"[^\"]{1,200}\"|`[^`]{1,200}`|'(?<!\w')[^']{1,200}'(?!\w)")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
# ``[-+]?\d[\d.,:/_-]*`` opened by a character class (a sign only before a digit) for the same skip-ahead
_NUM = re.compile(r"[-+\d](?:(?<=[-+])\d|(?<![-+]))[\d.,:/_-]*")
_DIGIT = re.compile(r"\d")
#: every byte but the ASCII digits (deleting them leaves the digits of ASCII text: a membership test without a regex)
_NOT_DIGIT = bytes(range(48)) + bytes(range(58, 256))
_WORD = re.compile(r"\w+")
#: ASCII bytes that ``\w`` matches kept, every other byte turned into a space (then ``split()`` gives the words)
_ASCII_WORD_BYTES = bytes(c if chr(c).isascii() and (chr(c).isalnum() or c == 0x5F) else 0x20 for c in range(256))
#: a word of this many characters or more is an identifier (masked to ``id``)
ID_CHARS = 25

#: prompts are cut to this many characters before normalising (a template shows in its first kB or two)
MAX_CHARS = 1500
_STOP = frozenset(
    (  # noqa: SIM905 - a word list reads better as text
        "the a an of to and in that it is was for on are as with be this from or by at not but what all were when "
        "we there can your which their if do will each about how up out them then so these would other into has "
        "more like than been its who now my did only way use may after just where most know get through back much "
        "before good new our me too any same also please you i give write explain describe tell show list make "
        "0 str url id email"
    ).split()
)


def normalise(text: str) -> str:
    """The prompt as a template sees it: NFKC, confusables folded, case folded, variable parts masked.

    >>> normalise("Ｅｘｐｌａｉｎ 42 things about \\"Paris\\"")
    'explain 0 things about str'
    """
    t = text[:MAX_CHARS]
    if not t.isascii():
        t = unicodedata.normalize("NFKC", t).translate(_CONFUSABLES)
    t = t.casefold()
    if "http" in t or "www." in t:
        t = _URL.sub(" url ", t)
    if '"' in t or "`" in t or "'" in t:
        t = _STR.sub(" str ", t)
    if "@" in t:
        t = _EMAIL.sub(" email ", t)
    if t.encode().translate(None, _NOT_DIGIT) if t.isascii() else _DIGIT.search(t):
        t = _NUM.sub(" 0 ", t)
    # ASCII text (most prompts): the same words as ``\w+`` (letters, digits, underscore) at a fraction of the cost
    words = t.encode().translate(_ASCII_WORD_BYTES).decode().split() if t.isascii() else _WORD.findall(t)
    if words and max(map(len, words)) >= ID_CHARS:
        words = ["id" if len(w) >= ID_CHARS else w for w in words]
    return " ".join(words)


def shingles(norm: str) -> list[bytes]:
    """Word unigrams and bigrams of normalised text (a one-word prompt still has one shingle), UTF-8 encoded."""
    words = norm.encode().split()
    return words + list(map(b" ".join, pairwise(words)))


def content_words(norm: str) -> frozenset[str]:
    """The distinct content words (no stop words, at least 4 letters): a cheap topic fingerprint."""
    # ``norm`` is words of ``\w`` joined by spaces, so splitting it finds them as ``\b\w{4,}`` would, twice as fast
    return frozenset([w for w in norm.split() if len(w) > 3]).difference(_STOP)


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 32-bit finalizer, as datasketch's affine32 scheme pre-mixes each input hash
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class MinHasher:
    """MinHash signatures with datasketch's ``affine32`` permutations (``num_perm`` of them, ``seed``).

    Args:
        num_perm: permutations (signature length).
        seed: datasketch's permutation seed.

    Example:
        >>> mh = MinHasher()
        >>> a = mh.signature(shingles("explain the theory of relativity step by step"))
        >>> b = mh.signature(shingles("explain the theory of evolution step by step"))
        >>> 0.0 < float((a == b).mean()) < 1.0
        True
    """

    def __init__(self, num_perm: int = NUM_PERM, seed: int = SEED) -> None:

        ref = MinHash(num_perm=num_perm, seed=seed)
        if getattr(ref, "scheme", "affine32") != "affine32":  # pragma: no cover - datasketch default
            raise InputError(f"datasketch's default MinHash scheme is {ref.scheme}, expected affine32")
        a, b = ref.permutations
        self.a = np.asarray(a, dtype=np.uint32)
        self.b = np.asarray(b, dtype=np.uint32)
        self.num_perm = num_perm
        self.seed = seed
        self._empty = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)

    def signature(self, items: list[bytes]) -> np.ndarray:
        """The MinHash of a set of byte strings (all ``2**32 - 1`` for the empty set)."""
        if not items:
            return self._empty.copy()
        return self._permuted(items).min(axis=0)

    def _permuted(self, items: list[bytes]) -> np.ndarray:
        """Every item's hash under every permutation, ``(len(items), num_perm)``."""
        hv = np.fromiter(map(zlib.crc32, items), dtype=np.uint32, count=len(items)).reshape(-1, 1)
        with np.errstate(over="ignore"):
            return _fmix32(hv) * self.a + self.b

    def signatures(self, sets: list[list[bytes]]) -> np.ndarray:
        """The MinHashes of several sets at once, ``(len(sets), num_perm)``: one numpy pass over all their items,
        which for short prompts costs a fraction of one :meth:`signature` call each."""
        out = np.empty((len(sets), self.num_perm), dtype=np.uint32)
        sizes = np.fromiter(map(len, sets), dtype=np.intp, count=len(sets))
        nonempty = sizes > 0
        out[~nonempty] = self._empty
        if not nonempty.any():
            return out
        phv = self._permuted([x for items in sets for x in items])
        starts = np.cumsum(sizes) - sizes
        out[nonempty] = np.minimum.reduceat(phv, starts[nonempty], axis=0)
        return out


class TemplateIndex:
    """Assigns each prompt a template id: the id of an earlier prompt it resembles, or a new one.

    Only the first prompt of a template enters the LSH bands, so a template cannot drift one slot at a time into
    a different one, and the index grows with the number of templates, not of prompts.

    Args:
        cache_size: normalised texts whose template id is remembered (least recently used are dropped).

    Example:
        >>> ti = TemplateIndex()
        >>> t1 = ti.template("Explain photosynthesis step by step, showing all of your reasoning.")[0]
        >>> t2 = ti.template("Explain black holes step by step, showing all of your reasoning.")[0]
        >>> t3 = ti.template("what's a good name for a cat?")[0]
        >>> t1 == t2, t1 == t3
        (True, False)
    """

    def __init__(self, cache_size: int = 50_000) -> None:
        self.hasher = MinHasher()
        self._bands: list[dict[bytes, int]] = [{} for _ in range(BANDS)]
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._keys: dict[str, list[bytes]] = {}  # band keys computed ahead by :meth:`prepare`
        self._band = np.dtype((np.void, ROWS * 4))
        self.count = 0  # templates so far

    def template(self, text: str) -> tuple[int, str]:
        """``(template id, normalised text)``; id 0 is the empty prompt."""
        norm = normalise(text)
        return self.template_of(norm), norm

    def _band_keys(self, norms: list[str]) -> list[list[bytes]]:
        sigs = self.hasher.signatures([shingles(n) for n in norms])
        # each band's ROWS values as one bytes object: the LSH bucket key
        return np.ascontiguousarray(sigs).view(self._band).reshape(len(norms), BANDS).tolist()

    def prepare(self, norms: list[str]) -> None:
        """Compute the signatures of the normalised texts not yet cached, all at once (a batch of prompts costs a
        fraction of hashing them one by one); :meth:`template_of` then only looks them up. Template ids do not
        depend on it: they are still given in the order :meth:`template_of` is called."""
        todo = list(dict.fromkeys(n for n in norms if n and n not in self._cache and n not in self._keys))
        if todo:
            if len(self._keys) > self._cache_size:
                self._keys.clear()
            self._keys.update(zip(todo, self._band_keys(todo), strict=True))

    def template_of(self, norm: str) -> int:
        """The template id of already normalised text (:func:`normalise`); 0 for the empty text."""
        if not norm:
            return 0
        tid = self._cache.get(norm)
        if tid is not None:
            self._cache.move_to_end(norm)
            return tid
        keys = self._keys.pop(norm, None)
        if keys is None:
            sig = self.hasher.signature(shingles(norm))
            keys = [sig[i * ROWS : (i + 1) * ROWS].tobytes() for i in range(BANDS)]
        found = [band[k] for band, k in zip(self._bands, keys, strict=True) if k in band]
        if found:
            tid = min(found)
        else:
            self.count += 1
            tid = self.count
            for band, k in zip(self._bands, keys, strict=True):
                band[k] = tid
        self._cache[norm] = tid
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tid
