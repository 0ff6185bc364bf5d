"""Does a prompt demand the chain of thought? A small linear classifier, by meaning rather than by phrase.

A reasoning-trace harvester wraps its problems in demands for the whole reasoning ("show every step", "think out
loud"); a phrase list catches the stock wordings and nothing else, and a paraphrase ("lay out how you get from the
facts to the result, stage by stage") goes through unseen. This recogniser is a logistic regression over
named (not hashed) features of normalised text: word unigrams, word bigrams and the character 3- and 4-grams of
each word, so that *deduce*, *deduction* and *deductive* share evidence. It is trained on a hand-written set of
demands and non-demands in many phrasings, with hard negatives ("explain the theory of relativity", "think of a
name for my cat", "step up the volume", "walk the dog"): :data:`TRAIN_FILE`.

A demand is local (a clause) while prompts may be long, so the score of a prompt is the **maximum over windows**
of :data:`WINDOW_WORDS` consecutive words of the linear score of the window, and the model is trained on
window-sized pieces (each demand alone and inside a window of unrelated words; every window of every
non-demand). A long benign prompt therefore cannot add up to a demand from many faintly positive words. The
price: a window can cut a qualifier off ("answer with | the letter only"), and only the first
:data:`~antidistill.monitor.templates.MAX_CHARS` characters of a prompt are read (as for its template).

Scoring is pure Python over dictionaries: each word's own contribution (its unigram and character n-gram
weights) is cached by word, so a prompt costs one dictionary look-up per word and per word pair; the monitor
caches the result by prompt text on top (``benchmarks/reasoning_intent.py`` measures both).

The fitted weights ship as :data:`WEIGHTS_FILE`, written by ``python -m antidistill.monitor.intent fit`` (needs
scikit-learn) from :data:`TRAIN_FILE`: loading them takes milliseconds and imports nothing heavy, while fitting
at first use would import scikit-learn (about a second) into every gateway and monitor; a test refits and checks
that the shipped weights are the fit of the shipped data. Maximum-entropy text classification with n-gram
features: Nigam, Lafferty & McCallum 1999, "Using maximum entropy for text classification"; character n-grams
for robustness to word forms: Cavnar & Trenkle 1994; Bojanowski et al. 2017, arXiv:1607.04606.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, chain, pairwise, repeat
from operator import add, sub
from pathlib import Path
from typing import Any

import numpy as np

from antidistill.errors import InputError
from antidistill.monitor.templates import normalise

#: the hand-written training set: ``label<TAB>text`` lines (1: demands the reasoning, 0: does not), ``#`` comments
TRAIN_FILE = Path(__file__).with_name("reasoning_intent.tsv")
#: the fitted weights (JSON), generated from :data:`TRAIN_FILE` by ``python -m antidistill.monitor.intent fit``
WEIGHTS_FILE = Path(__file__).with_name("reasoning_intent.json")
#: words per window: a demand is a clause; the prompt's score is its best window's
WINDOW_WORDS = 10
#: character n-gram lengths (of each word with ``<`` and ``>`` marking its ends)
CHAR_NGRAMS = (3, 4)
#: inverse strength of the fit's L2 regularisation (scikit-learn's ``C``)
C = 4.0
#: seed of the deterministic context mixing in :func:`training_examples`
SEED = 14
#: distinct words whose contribution a :class:`ReasoningIntent` caches (cleared when full)
WORD_CACHE = 50_000


# ---- the phrase list this recogniser replaced: the peer in benchmarks/reasoning_intent.py and a regression test
# (every phrase, in a demand, is still recognised) ------------------------------------------------------------------
#: phrases (in normalised text) that the monitor took as demands for the reasoning until it recognised them by meaning
PHRASES: tuple[str, ...] = (
    "step by step",
    "chain of thought",
    "thought process",
    "thinking out loud",
    "think out loud",
    "thinking tags",
    "think tags",
    "full reasoning",
    "complete reasoning",
    "internal reasoning",
    "entire reasoning",
    "detailed reasoning",
    "full working",
    "complete working",
    "full derivation",
    "detailed derivation",
    "every step",
    "each step",
    "every intermediate",
    "intermediate step",
    "intermediate calculation",
    "all your reasoning",
    "all of your reasoning",
    "all the reasoning",
    "all reasoning",
    "show your work",
    "show all your work",
    "show your working",
    "show all work",
    "show the work",
    "worked solution",
    "first principles",
    "do not skip any step",
    "don t skip any step",
    "explain your reasoning",
    "explain your complete reasoning",
    "explain your thought",
    "explain your complete thought",
    "reason carefully",
    "reason in detail",
    "reasoning made explicit",
    "verify your answer",
    "reasoning trace",
    "reasoning steps",
    "show your reasoning",
    "walk me through",
)
#: every phrase holds one of these (a cheap pre-test of :func:`phrase_demands`)
PROBES: tuple[str, ...] = (
    "step",
    "reason",
    "think",
    "thought",
    "work",
    "derivation",
    "intermediate",
    "principles",
    "verify",
    "walk",
)
_PHRASE_RE = re.compile("|".join(re.escape(p) for p in PHRASES))


def phrase_demands(norm: str) -> bool:
    """The old test: whether normalised text holds one of :data:`PHRASES` (substring match).

    >>> phrase_demands("solve it show all your reasoning step by step")
    True
    """
    return any(w in norm for w in PROBES) and _PHRASE_RE.search(norm) is not None


def word_features(word: str) -> list[str]:
    """The features one word contributes: itself and its character n-grams.

    >>> word_features("why")
    ['w:why', 'c:<wh', 'c:why', 'c:hy>', 'c:<why', 'c:why>']
    """
    out = ["w:" + word]
    padded = f"<{word}>"
    for n in CHAR_NGRAMS:
        out.extend("c:" + padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


def window_features(words: Sequence[str]) -> dict[str, float]:
    """Feature counts of one window of words (the training side of :meth:`ReasoningIntent.score`)."""
    x: dict[str, float] = {}
    for w in words:
        for f in word_features(w):
            x[f] = x.get(f, 0.0) + 1.0
    for a, b in pairwise(words):
        f = f"b:{a} {b}"
        x[f] = x.get(f, 0.0) + 1.0
    return x


def windows(words: Sequence[str], size: int = WINDOW_WORDS) -> list[Sequence[str]]:
    """Every run of ``size`` consecutive words (the whole text when it is shorter).

    >>> windows("a b c".split(), 2)
    [['a', 'b'], ['b', 'c']]
    """
    if len(words) <= size:
        return [words]
    return [words[i : i + size] for i in range(len(words) - size + 1)]


def read_examples(path: Path) -> list[tuple[int, str]]:
    """``(label, text)`` pairs of a ``label<TAB>text`` file (blank lines and ``#`` comments skipped)."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in ("0", "1") or not text.strip():
            raise InputError(f"{path.name} line {i}: expected '0|1<TAB>text', got {line!r}")
        out.append((int(label), text))
    return out


def training_examples(examples: Iterable[tuple[int, str]], seed: int = SEED) -> list[tuple[int, dict[str, float]]]:
    """Window-sized training pieces: each demand alone and once inside unrelated words (a window's worth, cut
    around it), and every window of every non-demand. Deterministic for a seed."""
    pairs = [(y, normalise(t).split()) for y, t in examples]
    pairs = [(y, w) for y, w in pairs if w]
    fillers = [w for y, w in pairs if y == 0]
    rng = random.Random(seed)
    out: list[tuple[int, dict[str, float]]] = []
    for y, words in pairs:
        if y == 1:
            out.append((1, window_features(words)))
            room = WINDOW_WORDS - len(words)
            if room > 0 and fillers:
                left = rng.randint(0, room)
                before = rng.choice(fillers)[-left:] if left else []
                after = rng.choice(fillers)[: room - left]
                out.append((1, window_features([*before, *words, *after])))
        else:
            out.extend((0, window_features(w)) for w in windows(words))
    return out


def fit(examples: Sequence[tuple[int, str]], c: float = C, seed: int = SEED) -> dict[str, Any]:
    """Fit the classifier (scikit-learn's liblinear logistic regression, deterministic) and return the weights
    document that :data:`WEIGHTS_FILE` holds."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    data = training_examples(examples, seed)
    vec = DictVectorizer(sort=True)
    x = vec.fit_transform([f for _, f in data]).tocsr()
    # liblinear takes 32-bit sparse indices only (DictVectorizer may hand out 64-bit ones)
    x.indices = x.indices.astype("int32")
    x.indptr = x.indptr.astype("int32")
    y = [label for label, _ in data]
    model = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=1000, random_state=0)
    model.fit(x, y)
    coef = model.coef_[0]
    names = vec.get_feature_names_out()
    weights = {str(n): round(float(w), 4) for n, w in zip(names, coef, strict=True) if abs(w) >= 5e-4}
    return {
        "about": "reasoning-demand classifier; generated by `python -m antidistill.monitor.intent fit`, do not edit",
        "window_words": WINDOW_WORDS,
        "char_ngrams": list(CHAR_NGRAMS),
        "c": c,
        "seed": seed,
        "examples": len(examples),
        "windows": len(data),
        "bias": round(float(model.intercept_[0]), 4),
        "weights": dict(sorted(weights.items())),
    }


@dataclass(frozen=True)
class Decision:
    """A recogniser's verdict on one text: the best window's score and the window itself."""

    demands: bool
    score: float
    window: str


class ReasoningIntent:
    """The fitted recogniser: :meth:`demands` on normalised text.

    Args:
        weights: feature name → weight (see :func:`word_features`; bigrams as ``b:word word``).
        bias: the intercept.
        threshold: a window scoring above this demands the reasoning (0: probability one half).
        window_words: words per window.

    Example:
        >>> from antidistill.monitor.templates import normalise
        >>> r = ReasoningIntent.shipped()
        >>> r.demands(normalise("Don't just give me the result; lay out how you got there, stage by stage."))
        True
        >>> r.demands(normalise("Explain the theory of relativity to a ten-year-old."))
        False
    """

    def __init__(
        self, weights: dict[str, float], bias: float, threshold: float = 0.0, window_words: int = WINDOW_WORDS
    ) -> None:
        if window_words < 1:
            raise InputError(f"window_words must be >= 1, got {window_words}")
        self.weights = weights
        self.bias = bias
        self.threshold = threshold
        self.window_words = window_words
        self._words: dict[str, float] = {}
        # word pairs as tuples of their words, so that a look-up takes what pairwise() yields, with no key string
        # built per pair (the words' hashes are cached by the strings)
        self._pairs = {tuple(f[2:].split(" ", 1)): v for f, v in weights.items() if f.startswith("b:")}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], threshold: float = 0.0) -> ReasoningIntent:
        """From a weights document (as :func:`fit` returns and :data:`WEIGHTS_FILE` holds)."""
        try:
            if tuple(doc["char_ngrams"]) != CHAR_NGRAMS:
                raise InputError(f"char_ngrams must be {list(CHAR_NGRAMS)}, got {doc['char_ngrams']}")
            return cls(dict(doc["weights"]), float(doc["bias"]), threshold, int(doc["window_words"]))
        except KeyError as exc:
            raise InputError(f"reasoning-intent weights lack the field {exc.args[0]!r}") from None

    @classmethod
    def shipped(cls) -> ReasoningIntent:
        """The recogniser fitted on :data:`TRAIN_FILE` (loaded once per process)."""
        return _shipped()

    def _word(self, word: str) -> float:
        got = self._words.get(word)
        if got is None:
            if len(self._words) >= WORD_CACHE:
                self._words.clear()
            w = self.weights
            got = self._words[word] = sum(w.get(f, 0.0) for f in word_features(word))
        return got

    def score(self, norm: str) -> float:
        """The best window's linear score (log-odds) of normalised text (``-inf`` for empty text)."""
        words = norm.split()
        n = len(words)
        if not n:
            return float("-inf")
        u = list(map(self._words.get, words))
        if None in u:
            u = list(map(self._word, words))
        # b[i]: the weight of the pair (words[i], words[i + 1]); a window [s, s + k) holds pairs s .. s + k - 2
        b = list(map(self._pairs.get, pairwise(words), repeat(0.0)))
        k = self.window_words
        if n <= k:
            return self.bias + sum(u) + sum(b)  # type: ignore[arg-type]
        # every window's sum from prefix sums, in C-level loops (a Python loop over the windows costs 2-3x more)
        pu = list(accumulate(u, initial=0.0))  # type: ignore[arg-type]
        pb = list(accumulate(b, initial=0.0))
        m = n - k + 1
        return self.bias + max(map(add, map(sub, pu[k:], pu[:m]), map(sub, pb[k - 1 : n], pb[:m])))

    def demands(self, norm: str) -> bool:
        """Whether normalised text (:func:`~antidistill.monitor.templates.normalise`) demands the reasoning."""
        return self.score(norm) > self.threshold

    def scores(self, texts: Sequence[Sequence[str]]) -> np.ndarray:
        """:meth:`score` of many texts at once, each given as its words (``norm.split()``), bit for bit.

        The texts' windows are summed in numpy over a texts × words matrix: each row's running sums are the ones
        :meth:`score` accumulates (numpy's ``cumsum`` along a row adds in order, from the row's first word), and
        each window is the same difference of two of them, so the values are identical (the tests check). For a
        worker's batch of a few hundred prompts this costs a fraction of scoring them one by one: the look-ups
        stay, the per-prompt loops over windows go.
        """
        k = self.window_words
        sizes = np.fromiter(map(len, texts), dtype=np.intp, count=len(texts))
        out = np.full(len(texts), -np.inf)
        total = int(sizes.sum())
        if not total:
            return out
        words = list(chain.from_iterable(texts))
        cache = self._words
        new = set(words).difference(cache)
        if new:  # weigh the batch's new words once each (the cache may overshoot by one batch)
            w = self.weights
            if len(cache) + len(new) > WORD_CACHE:
                cache.clear()
            cache.update({x: sum(w.get(f, 0.0) for f in word_features(x)) for x in new})
        u = np.fromiter(map(cache.__getitem__, words), dtype=float, count=total)
        # pair j is (words[j], words[j + 1]); those across two texts are dropped below
        b = np.fromiter(map(self._pairs.get, pairwise(words), repeat(0.0)), dtype=float, count=total - 1)
        rows = np.repeat(np.arange(len(texts)), sizes)
        cols = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        width = int(sizes.max())
        pu = np.zeros((len(texts), width + 1))
        pu[rows, cols + 1] = u
        inside = (cols + 1 < sizes[rows])[:-1]  # the pair's second word is in the same text
        pb = np.zeros((len(texts), width + 1))
        pb[rows[:-1][inside], cols[:-1][inside] + 1] = b[inside]
        np.cumsum(pu, axis=1, out=pu)  # pu[i, j]: the sum of text i's first j word weights, as accumulate() gives
        np.cumsum(pb, axis=1, out=pb)
        live = sizes > 0
        short = live & (sizes <= k)
        idx = np.flatnonzero(short)
        # a text of at most k words is one window: bias + sum(u) + sum(b), in score's order
        out[idx] = (self.bias + pu[idx, sizes[idx]]) + pb[idx, sizes[idx] - 1]
        idx = np.flatnonzero(live & ~short)
        if len(idx):
            m = width - k + 1  # window starts 0 .. width - k
            win = (pu[idx, k:] - pu[idx, :m]) + (pb[idx, k - 1 : width] - pb[idx, :m])
            win[np.arange(m)[None, :] > (sizes[idx] - k)[:, None]] = -np.inf  # windows past the text's end
            out[idx] = self.bias + win.max(axis=1)
        return out

    def explain(self, norm: str) -> Decision:
        """The verdict with the window that decided it (slow; for reports and debugging)."""
        words = norm.split()
        if not words:
            return Decision(False, float("-inf"), "")
        best = max(windows(words, self.window_words), key=lambda ws: self.score(" ".join(ws)))
        s = self.score(" ".join(best))
        return Decision(s > self.threshold, s, " ".join(best))


@cache
def _shipped() -> ReasoningIntent:
    try:
        doc = json.loads(WEIGHTS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the reasoning-intent weights {WEIGHTS_FILE.name}: {exc}") from None
    return ReasoningIntent.from_dict(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m antidistill.monitor.intent fit [--check]``: refit :data:`WEIGHTS_FILE` from
    :data:`TRAIN_FILE` (``--check``: only say whether the shipped file is the fit; exit 1 if not)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "fit":
        sys.stderr.write("usage: python -m antidistill.monitor.intent fit [--check]\n")
        return 2
    doc = fit(read_examples(TRAIN_FILE))
    text = json.dumps(doc, indent=0, sort_keys=False) + "\n"
    if "--check" in args:
        same = WEIGHTS_FILE.is_file() and WEIGHTS_FILE.read_text(encoding="utf-8") == text
        sys.stdout.write(f"{WEIGHTS_FILE.name}: {'up to date' if same else 'stale: run fit'}\n")
        return 0 if same else 1
    WEIGHTS_FILE.write_text(text, encoding="utf-8")
    sys.stdout.write(f"{WEIGHTS_FILE.name}: {len(doc['weights'])} weights from {doc['examples']} examples\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
