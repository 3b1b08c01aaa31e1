#!/usr/bin/env bash
# The LibreOffice help corpus + Debian's translated man pages -> a prepared TreLM data
# directory (docs/data-layout.md).  This is the corpus trelm-demo and a plain
# `trelm-prepare --tgt TGT_LANG` use.
#
# usage: preprocess/manpages.sh [TGT_LANG]
#
# Parallel text: the help pages, as in libreoffice_help.sh.  Target monolingual text, added to
# the target side of the parallel training split: the paragraphs of every page in Debian's
# manpages-TGT_LANG package (groff source, macros stripped).  Man
# pages are monolingual (no English counterpart), so they serve the masked-LM stages and the
# vocabulary, not the alignments.  Debian has translated man pages for 20 of the 29 help
# languages: cs da de el es fi fr hu id it ja nl pl pt-br ru sv tr vi zh-cn zh-tw.  Needs apt-get
# and the network on the first run only.
#
# Steps: trelm-fetch-corpus (help pages + man pages) into $OUT/corpus, then trelm-prepare
# --corpus-dir (vocabulary, fairseq-preprocess, alignments, import, embeddings).  A re-run skips
# every finished step (and reuses the downloaded packages).
set -euo pipefail

# ---- edit these (or set them in the environment) -------------------------------------------
TGT_LANG="${1:-${TGT_LANG:-tr}}"      # a language with man pages (list above)
SRC_LANG="${SRC_LANG:-en}"            # the help corpus is English-centred: keep en
OUT="${OUT:-data/$SRC_LANG-$TGT_LANG}"
VOCAB_SIZE="${VOCAB_SIZE:-auto}"      # sentencepiece pieces: auto, or a number used exactly
SOURCE_MODEL="${SOURCE_MODEL:-}"      # HF / fairseq / trelm-import folder; empty: embedded MiniLM
CACHE_DIR="${CACHE_DIR:-}"            # empty: $TRELM_CACHE or ~/.cache/trelm_fairseq
THREADS="${THREADS:-2}"
# more: SEED, VALID_SIZE, TEST_SIZE, PREPARE_ARGS, CORPUS_ONLY (see preprocess/_common.sh)
# ---------------------------------------------------------------------------------------------

source "$(dirname "$0")/_common.sh"
(( $# <= 1 )) || usage_error "expected at most one argument, TGT_LANG"
# 0. a language without translated man pages would silently get the help pages only
"$PYTHON" -c '
import sys
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.languages import get_language
try:
    pkg = get_language(sys.argv[1]).manpages_package
except TreLMError as e:
    sys.exit(f"manpages.sh: error: {e}")
if pkg is None:
    sys.exit(f"manpages.sh: error: Debian has no translated man pages for {sys.argv[1]!r}: "
             "use preprocess/libreoffice_help.sh")
' "$TGT_LANG"

fetch_corpus                 # 1. corpus: $OUT/corpus; man pages in mono.$TGT_LANG.train
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
for s in r["sources"]:
    if s["kind"] == "manpages":
        print("man pages: %s paragraphs from %s pages of %s"
              % (s.get("paragraphs", 0), s.get("pages", 0), s["package"]))
' "$OUT/corpus/corpus.json"
prepare                      # 2-6. vocab, binarize, align, import, embeddings
show_fairseq_preprocess
show_training
