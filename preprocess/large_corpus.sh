#!/usr/bin/env bash
# A large corpus: Wikipedia text (monolingual, per language) + OPUS bitext -> a prepared TreLM
# data directory (docs/data-layout.md).  Nothing is downloaded: get the files first (below).
#
# usage: preprocess/large_corpus.sh [RAW_DIR]
#
# Expected under RAW_DIR (default raw/$SRC_LANG-$TGT_LANG), plain UTF-8 text, one sentence or
# paragraph a line:
#   wiki.$TGT_LANG.txt               target-language Wikipedia text (required)
#   wiki.$SRC_LANG.txt               source-language Wikipedia text (optional)
#   opus/C.PAIR.$SRC_LANG            for every corpus C in OPUS_CORPORA: OPUS's "Moses" format,
#   opus/C.PAIR.$TGT_LANG            two line-aligned files; PAIR = the two codes in alphabetical
#                                    order, OPUS's naming (en-tr, de-en, ...)
# Where they come from:
#   Wikipedia: https://dumps.wikimedia.org/<lang>wiki/latest/<lang>wiki-latest-pages-articles.xml.bz2,
#     turned into plain text with an extractor such as WikiExtractor (drop the <doc> lines and
#     the empty ones; lines over MAX_WORDS words are skipped by the corpus step anyway).
#   OPUS: https://opus.nlpl.eu -> pick the pair, a corpus (WikiMatrix, OpenSubtitles, CCMatrix,
#     ...) and the "Moses" download (a zip holding C.PAIR.xx and C.PAIR.yy).
# A missing or empty file stops the recipe before anything runs, naming the file.
#
# Steps: (cap the monolingual text at MAX_MONO_LINES lines per language: the corpus step holds
# its text in memory), trelm-fetch-corpus --parallel (each OPUS corpus) --mono / --mono-src
# (Wikipedia) into $OUT/corpus, then trelm-prepare --corpus-dir (vocabulary, fairseq-preprocess,
# alignments, import, embeddings).  A re-run skips every finished step.
set -euo pipefail

# ---- edit these (or set them in the environment) -------------------------------------------
TGT_LANG="${TGT_LANG:-tr}"
SRC_LANG="${SRC_LANG:-en}"
OPUS_CORPORA="${OPUS_CORPORA:-WikiMatrix}"   # space-separated OPUS corpus names
OUT="${OUT:-data/$SRC_LANG-$TGT_LANG-large}"
MAX_MONO_LINES="${MAX_MONO_LINES:-2000000}"  # first N lines of each wiki file; 0: all
MAX_PAIRS="${MAX_PAIRS:-}"                   # at most N parallel training pairs; empty: all
VOCAB_SIZE="${VOCAB_SIZE:-32000}"            # a large corpus supports more pieces than auto's 16k
SOURCE_MODEL="${SOURCE_MODEL:-}"             # empty: the embedded all-MiniLM-L6-v2
THREADS="${THREADS:-8}"
VALID_SIZE="${VALID_SIZE:-2000}"
TEST_SIZE="${TEST_SIZE:-2000}"
# more: SEED, PREPARE_ARGS, CORPUS_ONLY, CACHE_DIR (see preprocess/_common.sh)
# ---------------------------------------------------------------------------------------------

source "$(dirname "$0")/_common.sh"
(( $# <= 1 )) || usage_error "expected at most one argument, RAW_DIR"
RAW="${1:-raw/$SRC_LANG-$TGT_LANG}"

# 0. check the layout (every file, before anything runs)
[[ -d "$RAW" ]] || die "missing input folder: $RAW (RAW_DIR; the expected layout: $0 --help)"
pair="$(printf '%s\n' "$SRC_LANG" "$TGT_LANG" | LC_ALL=C sort | paste -sd-)"
inputs=()
for c in $OPUS_CORPORA; do
    need_file "$RAW/opus/$c.$pair.$SRC_LANG" "OPUS $c, Moses format, $SRC_LANG side"
    need_file "$RAW/opus/$c.$pair.$TGT_LANG" "OPUS $c, Moses format, $TGT_LANG side"
    inputs+=(--parallel "$RAW/opus/$c.$pair.$SRC_LANG" "$RAW/opus/$c.$pair.$TGT_LANG")
done
need_file "$RAW/wiki.$TGT_LANG.txt" "$TGT_LANG Wikipedia text"

mono() {  # mono FILE: FILE, or its first MAX_MONO_LINES lines in $OUT/input/
    if [[ "$MAX_MONO_LINES" == 0 ]]; then echo "$1"; return; fi
    mkdir -p "$OUT/input"
    head -n "$MAX_MONO_LINES" "$1" > "$OUT/input/$(basename "$1")"
    echo "$OUT/input/$(basename "$1")"
}
inputs+=(--mono "$(mono "$RAW/wiki.$TGT_LANG.txt")")
if [[ -s "$RAW/wiki.$SRC_LANG.txt" ]]; then
    inputs+=(--mono-src "$(mono "$RAW/wiki.$SRC_LANG.txt")")
else
    echo "note: no $RAW/wiki.$SRC_LANG.txt: $SRC_LANG monolingual text = the OPUS $SRC_LANG side only" >&2
fi

fetch_corpus "${inputs[@]}"                         # 1. corpus into $OUT/corpus
prepare ${MAX_PAIRS:+--max-pairs "$MAX_PAIRS"}      # 2-6. vocab ... embeddings
show_fairseq_preprocess
show_training
