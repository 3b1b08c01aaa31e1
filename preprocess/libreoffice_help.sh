#!/usr/bin/env bash
# The LibreOffice help corpus (the package's default data source) -> a prepared TreLM data
# directory (docs/data-layout.md).
#
# usage: preprocess/libreoffice_help.sh [TGT_LANG]
#
# Parallel text: Debian's libreoffice-help-en-us and libreoffice-help-TGT_LANG packages
# (apt-get download, into CACHE_DIR, reused when there), help paragraphs aligned by their ids,
# untranslated / duplicate pairs dropped, a seeded train/valid/test split with no text shared
# across splits.  Source monolingual text: every en-US help paragraph.  Only the help pages: the
# target-language man pages are left out here (manpages.sh adds them).  29 languages:
# trelm-fetch-corpus --help lists them; 5k-34k training pairs each (README).  Needs apt-get and the network
# on the first run only.
#
# Steps: trelm-fetch-corpus --no-manpages into $OUT/corpus, then trelm-prepare --corpus-dir
# (vocabulary, fairseq-preprocess, alignments, import, embeddings).  A re-run skips every
# finished step (and reuses the downloaded packages).
set -euo pipefail

# ---- edit these (or set them in the environment) -------------------------------------------
TGT_LANG="${1:-${TGT_LANG:-tr}}"      # a help-corpus language: ca cs da de ... tr vi zh-cn zh-tw
SRC_LANG="${SRC_LANG:-en}"            # the help corpus is English-centred: keep en
OUT="${OUT:-data/$SRC_LANG-$TGT_LANG-help}"
VOCAB_SIZE="${VOCAB_SIZE:-auto}"      # sentencepiece pieces: auto, or a number used exactly
SOURCE_MODEL="${SOURCE_MODEL:-}"      # HF / fairseq / trelm-import folder; empty: embedded MiniLM
CACHE_DIR="${CACHE_DIR:-}"            # empty: $TRELM_CACHE or ~/.cache/trelm_fairseq
THREADS="${THREADS:-2}"
# more: SEED, VALID_SIZE, TEST_SIZE, PREPARE_ARGS, CORPUS_ONLY (see preprocess/_common.sh)
# ---------------------------------------------------------------------------------------------

source "$(dirname "$0")/_common.sh"
(( $# <= 1 )) || usage_error "expected at most one argument, TGT_LANG"

fetch_corpus --no-manpages   # 1. corpus: $OUT/corpus (+ train.module etc.: the help module of each pair)
prepare                      # 2-6. vocab, binarize, align, import, embeddings
show_fairseq_preprocess
show_training
