"""Dependency parsing on top of a trelm encoder (not a fairseq registration module).

conll      CoNLL-U reading / checking / writing (errors name file and line)
text       surface text, Turkish lower-casing, subword encoding + first-subword index per word
treebank   the turkish-treebanks package files and our fixed seeded split
prepare    CoNLL-U -> binarized data directory (``trelm-parse-prepare``)
evaluate   decode a split with a trained parser, write CoNLL-U + metrics (``trelm-parse-eval``)
(Eisner decoding of parser outputs: modules/eisner.py, modules/tree_decoding.py)
metrics    UAS / LAS with punctuation excluded

The fairseq parts live in models/trelm_parser.py, tasks/trelm_parsing.py and
criterions/trelm_parsing.py; the commands in cli/parse_prepare.py and cli/parse_eval.py.
"""
from .conll import Sentence, Token, is_punct, read_conllu, parse_conllu, write_conllu  # noqa: F401
from ..modules.eisner import eisner, greedy, is_projective, is_tree  # noqa: F401
from .metrics import AttachmentScore, score_sentences  # noqa: F401
from .text import SubwordEncoder, surface, turkish_lower  # noqa: F401
