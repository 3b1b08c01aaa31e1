"""Attachment scores.

UAS: share of scored words whose predicted head is the gold head.  LAS: share
whose predicted head *and* relation label are gold.  Punctuation is not scored
(the usual convention): a word is punctuation if its gold UPOS is PUNCT or its
gold relation is ``p`` (Turkish treebanks) / ``punct`` (UD), see
:func:`trelm_fairseq.parsing.conll.is_punct`.  Scores with punctuation included
are reported alongside (``uas_with_punct`` / ``las_with_punct``).
"""
from dataclasses import dataclass
from typing import Dict, Sequence

from ..errors import TreLMError
from .conll import Sentence


@dataclass
class AttachmentScore:
    words: int = 0  # scored words (punctuation excluded)
    uas_correct: int = 0
    las_correct: int = 0
    words_with_punct: int = 0
    uas_correct_with_punct: int = 0
    las_correct_with_punct: int = 0
    sentences: int = 0

    def add(self, gold_heads: Sequence[int], gold_labels: Sequence, pred_heads: Sequence[int],
            pred_labels: Sequence, punct: Sequence[bool]) -> None:
        n = len(gold_heads)
        if not (len(gold_labels) == len(pred_heads) == len(pred_labels) == len(punct) == n):
            raise ValueError("gold / predicted heads, labels and the punctuation mask differ in length")
        self.sentences += 1
        for gh, gl, ph, pl, p in zip(gold_heads, gold_labels, pred_heads, pred_labels, punct):
            head_ok = int(gh) == int(ph)
            both_ok = head_ok and gl == pl
            self.words_with_punct += 1
            self.uas_correct_with_punct += head_ok
            self.las_correct_with_punct += both_ok
            if not p:
                self.words += 1
                self.uas_correct += head_ok
                self.las_correct += both_ok

    @staticmethod
    def _pct(num: int, den: int) -> float:
        return 100.0 * num / den if den else 0.0

    @property
    def uas(self) -> float:
        return self._pct(self.uas_correct, self.words)

    @property
    def las(self) -> float:
        return self._pct(self.las_correct, self.words)

    def as_dict(self) -> Dict:
        return {
            "uas": round(self.uas, 4),
            "las": round(self.las, 4),
            "uas_with_punct": round(self._pct(self.uas_correct_with_punct, self.words_with_punct), 4),
            "las_with_punct": round(self._pct(self.las_correct_with_punct, self.words_with_punct), 4),
            "sentences": self.sentences,
            "words_scored": self.words,
            "words_total": self.words_with_punct,
            "punct_excluded": self.words_with_punct - self.words,
        }


def score_sentences(gold: Sequence[Sentence], pred: Sequence[Sentence]) -> AttachmentScore:
    """Attachment scores of predicted against gold CoNLL-U sentences (same words)."""
    if len(gold) != len(pred):
        raise TreLMError(f"gold has {len(gold)} sentences, prediction {len(pred)}")
    score = AttachmentScore()
    for k, (g, p) in enumerate(zip(gold, pred)):
        if [t.form for t in g.tokens] != [t.form for t in p.tokens]:
            raise TreLMError(f"sentence {k + 1} (gold line {g.start_line}): words differ between gold and prediction")
        score.add(g.heads, g.deprels, p.heads, p.deprels, g.punct_mask)
    return score
