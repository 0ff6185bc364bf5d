"""Which tuples a scan scores: the prefix-pair rule of open mode, prompt windows, deduplication, closed mode."""

from __future__ import annotations

import numpy as np
import pytest

from antidistill.forensics.attribution import attribute_tuples
from antidistill.forensics.scan import completion_tuples, reading_tuples
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark
from tests.synthetic import TEST_MASTER, sample


def _scored(t) -> list[tuple[int, int]]:
    return list(zip(t.contexts[:, 0].tolist(), t.tokens.tolist(), strict=True))


def test_copy_of_a_pair_read_earlier_is_not_scored():
    # prompt [50, 51]; answer 1 2 3 1 ?: at t = 6 the model predicts 2 after 1, a pair it has read at t = 3
    seq = [50, 51, 1, 2, 3, 1, 9]
    pred = [-1, 0, 0, 2, 3, 4, 2]
    t = reading_tuples([seq], [2], [pred], 1, "prefix-pairs")
    assert _scored(t) == [(1, 2), (2, 3), (3, 4)]
    assert t.skipped == {"window-in-prompt": 1, "seen-in-prefix": 1}
    assert t.seen == 5  # answer positions 2..6
    # the measurement policy keeps it (and so counts the copy): it is deduplicated against (1, 2) only
    t = reading_tuples([seq], [2], [pred], 1, "prompt")
    assert t.skipped == {"window-in-prompt": 1, "duplicate": 1}
    pred2 = [-1, 0, 0, 2, 3, 4, 3]  # a copy of (1, 3)? no: (1, 3) was never read, so it is scored
    t = reading_tuples([seq], [2], [pred2], 1, "prefix-pairs")
    assert (1, 3) in _scored(t)


def test_the_actual_next_token_is_scored_the_first_time_only():
    """A student that memorised the answer predicts the actual next token: scored at the pair's first
    occurrence in the corpus, never again (not in the same text, not in a later one)."""
    a = [7, 1, 2, 3, 1, 2, 4]
    b = [7, 5, 1, 2, 6]
    t = reading_tuples([a, b], [1, 1], [[-1, *a[1:]], [-1, *b[1:]]], 1)
    assert _scored(t) == [(1, 2), (2, 3), (3, 1), (2, 4), (5, 1), (2, 6)]
    assert t.skipped["seen-in-prefix"] == 2  # (1, 2) again in a, and (1, 2) in b
    assert t.skipped["window-in-prompt"] == 2


def test_pairs_of_earlier_texts_and_of_the_prompt_are_excluded():
    # text 2 quotes a pair of text 1 ((3, 4)), and its own prompt's pair ((8, 9)), in its prompt and its answer
    t1 = [0, 3, 4]
    t2 = [8, 9, 5, 3, 8, 1]
    pred2 = [-1, 0, 0, 0, 4, 9]  # predicts 4 after 3 (read in text 1), 9 after 8 (read in its prompt)
    t = reading_tuples([t1, t2], [1, 2], [[-1, 0, 9], pred2], 1)
    assert (3, 4) not in _scored(t) and (8, 9) not in _scored(t)
    assert t.skipped["seen-in-prefix"] == 2
    # under the measurement policy only the prompt's pair is skipped
    t = reading_tuples([t1, t2], [1, 2], [[-1, 0, 9], pred2], 1, "prompt")
    assert (3, 4) in _scored(t) and (8, 9) not in _scored(t) and t.skipped["in-prompt"] == 1


def test_wider_windows_touching_the_prompt_are_skipped():
    seq = [1, 2, 3, 4, 5, 6]
    t = reading_tuples([seq], [3], [[-1, 0, 0, 9, 9, 9]], 2)
    # answer positions 3, 4, 5: windows (2, 3) and (3, 4) touch the prompt; only (4, 5) -> 9 is scored
    assert t.contexts.tolist() == [[4, 5]] and t.tokens.tolist() == [9]
    assert t.skipped == {"window-in-prompt": 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="exclude"):
        reading_tuples([[1, 2]], [0], [[-1, 2]], 1, "nothing")
    with pytest.raises(ValueError, match="predictions"):
        reading_tuples([[1, 2, 3]], [0], [[-1, 2]], 1)


def test_closed_mode_skips_prompt_tuples_and_duplicates():
    comps = [[1, 2, 3, 1, 2], [2, 3, 7]]
    grams = [{(2, 3)}, set()]
    t = completion_tuples(comps, grams, 1)
    assert _scored(t) == [(1, 2), (3, 1), (2, 3), (3, 7)]
    assert t.skipped == {"in-prompt": 1, "duplicate": 1} and t.seen == 6


def _induction_predictions(seq: np.ndarray, rng: np.random.Generator, vocab: int) -> np.ndarray:
    """A model that knows nothing of the key but copies: after token a it predicts what followed a the last time
    (an induction head), else a random token."""
    pred = np.full(len(seq), -1, dtype=np.int64)
    last: dict[int, int] = {}
    for t in range(1, len(seq)):
        a = int(seq[t - 1])
        pred[t] = last.get(a, int(rng.integers(vocab)))
        if t >= 2:
            last[int(seq[t - 2])] = a
    return pred


def test_copying_model_is_innocent_only_under_prefix_pairs():
    """The teacher-control effect on synthetic data: an induction model fed watermarked text looks marked when
    only the prompt is excluded, and gives uniform p-values with the prefix-pair rule."""
    config = WatermarkConfig(scheme="antidistill-v1")
    wm = Watermark(config)
    vocab, length, trials = 60, 300, 80
    p_prompt, p_prefix = [], []
    for i in range(trials):
        rng = np.random.default_rng(100 + i)
        acct = f"a{i}"
        seqs = sample(rng, wm, TEST_MASTER.account_key(acct), TEST_MASTER.provider_key(), length, vocab, batch=2)
        preds = [_induction_predictions(s, rng, vocab) for s in seqs]
        for policy, sink in (("prompt", p_prompt), ("prefix-pairs", p_prefix)):
            t = reading_tuples(list(seqs), [2, 2], preds, 1, policy)
            att = attribute_tuples(
                config,
                t.contexts,
                t.tokens,
                [TEST_MASTER.provider_key()],
                {acct: [TEST_MASTER.account_key(acct)]},
                curve_points=0,
            )
            sink.append(att.provider.p_value)
    p_prompt, p_prefix = np.array(p_prompt), np.array(p_prefix)
    assert np.median(p_prompt) < 1e-3  # the copies are green: a false accusation without the rule
    for a in (0.01, 0.05, 0.2):
        assert (p_prefix <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / trials), a
