#!/usr/bin/env bash
# Your own parallel + monolingual files -> a prepared TreLM data directory (docs/data-layout.md).
#
# usage: preprocess/own_files.sh SRC_FILE TGT_FILE [SRC_FILE TGT_FILE ...]
#
# SRC_FILE / TGT_FILE: line-aligned parallel text, UTF-8, line i of TGT_FILE the translation of
# line i of SRC_FILE (several pairs of files: all are used).  Extra monolingual text goes in
# MONO_TGT / MONO_SRC below.  Empty and over-long lines are skipped and counted; different line
# counts or bad UTF-8 stop the run with the file and line.  The pairs are split (seeded) into
# train/valid/test, so give all your parallel text at once.
#
# Steps: trelm-fetch-corpus --parallel/--mono (validate, clean, de-duplicate, split into
# $OUT/corpus), then trelm-prepare --corpus-dir (joint sentencepiece vocabulary + dict.txt,
# fairseq-preprocess binarization, eflomal word alignments, source-model import, mapped
# embeddings -> $OUT/init/model.pt).  A re-run skips every finished step.
set -euo pipefail

# ---- edit these (or set them in the environment) -------------------------------------------
TGT_LANG="${TGT_LANG:-tr}"            # target language code (any code, e.g. tr, sk, sw)
SRC_LANG="${SRC_LANG:-en}"            # the source model's language
OUT="${OUT:-data/$SRC_LANG-$TGT_LANG}"  # the data directory to write
MONO_TGT="${MONO_TGT:-}"              # target-language monolingual files, space-separated
MONO_SRC="${MONO_SRC:-}"              # source-language monolingual files, space-separated
VOCAB_SIZE="${VOCAB_SIZE:-auto}"      # sentencepiece pieces: auto, or a number used exactly
SOURCE_MODEL="${SOURCE_MODEL:-}"      # HF / fairseq / trelm-import folder; empty: embedded MiniLM
THREADS="${THREADS:-2}"
# more: SEED, VALID_SIZE, TEST_SIZE, PREPARE_ARGS, CORPUS_ONLY (see preprocess/_common.sh)
# ---------------------------------------------------------------------------------------------

source "$(dirname "$0")/_common.sh"
(( $# >= 2 && $# % 2 == 0 )) || usage_error "expected parallel files in pairs: SRC_FILE TGT_FILE"

inputs=()
while (( $# )); do
    need_file "$1" "parallel text, $SRC_LANG side"
    need_file "$2" "parallel text, $TGT_LANG side"
    inputs+=(--parallel "$1" "$2")
    shift 2
done
for f in $MONO_TGT; do need_file "$f" "MONO_TGT: $TGT_LANG monolingual text"; inputs+=(--mono "$f"); done
for f in $MONO_SRC; do need_file "$f" "MONO_SRC: $SRC_LANG monolingual text"; inputs+=(--mono-src "$f"); done

fetch_corpus "${inputs[@]}"   # 1. corpus: $OUT/corpus/{train,valid,test}.{S,T}, mono.*, corpus.json
prepare                       # 2-6. vocab, binarize, align, import, embeddings
show_fairseq_preprocess
show_training
