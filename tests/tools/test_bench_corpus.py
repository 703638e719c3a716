"""tools/bench/corpus.py: the corpus it embeds and the padding each batching computes."""

from __future__ import annotations

import pytest

from optc.errors import InputError
from optc.tools.bench.corpus import corpus, padded_tokens


def test_padded_tokens_counts_each_batch_at_its_longest() -> None:
    lengths = [2, 9, 3, 8]
    assert padded_tokens(lengths, 2, sort=False) == 2 * 9 + 2 * 8    # [2, 9], [3, 8]
    assert padded_tokens(lengths, 2, sort=True) == 2 * 9 + 2 * 3     # [9, 8], [3, 2]
    assert padded_tokens(lengths, 1, sort=False) == sum(lengths)     # no padding at batch 1
    assert padded_tokens(lengths, 3, sort=True) == 3 * 9 + 2         # [9, 8, 3], [2]


def test_corpus_mixes_the_three_dev_sets_deterministically(data_dir) -> None:
    texts = corpus(1000, data_dir)
    assert len(texts) == 1000 and texts == corpus(1000, data_dir)
    assert len(set(texts)) > 950 and all(isinstance(t, str) and t for t in texts)
    lengths = sorted(len(t.split()) for t in texts)
    assert lengths[0] < 5 and lengths[-1] > 40  # short SST-2 phrases to long RTE premises
    with pytest.raises(InputError, match="the corpus has"):
        corpus(10**6, data_dir)
