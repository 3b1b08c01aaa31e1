# Shared by the recipes in preprocess/ (sourced, not run).  Nothing here downloads anything.
#
# Every recipe sets its variables first (each one can also be given in the environment:
# TGT_LANG=de OUT=data/en-de preprocess/libreoffice_help.sh), then calls, in this order:
#   fetch_corpus ARGS...    trelm-fetch-corpus ARGS... --out "$OUT/corpus"   (step 1: the corpus)
#   prepare                 trelm-prepare --corpus-dir "$OUT/corpus" --out "$OUT" ...  (steps 2-6)
#   show_fairseq_preprocess the plain fairseq-preprocess calls of the binarize step, filled in
#   show_training           how to train on the result
# The language variables are SRC_LANG / TGT_LANG, never LANG: LANG is the locale of every
# program the recipe starts.

: "${SRC_LANG:=en}"
: "${THREADS:=2}"
: "${SEED:=1}"
: "${VOCAB_SIZE:=auto}"          # auto: up to 16000 pieces, fewer when the corpus is small
: "${SOURCE_MODEL:=}"            # empty: the embedded all-MiniLM-L6-v2
: "${PREPARE_ARGS:=}"            # more trelm-prepare options, shell-quoted
: "${CORPUS_ONLY:=0}"            # 1: stop after the corpus (to look at it first)
: "${VALID_SIZE:=}"              # held-out pairs: a count, or a fraction if < 1;
: "${TEST_SIZE:=}"               #   empty: min(1000, 5%)
: "${CACHE_DIR:=}"               # Debian download cache; empty: $TRELM_CACHE or ~/.cache/trelm_fairseq

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

usage_error() {  # usage_error MESSAGE: the script's usage line (its header's "usage:" line)
    grep -m1 '^# usage:' "$0" | sed 's/^# //' >&2
    die "$*"
}

# Sourced without arguments, this file sees the recipe's own: -h / --help prints the recipe's
# header comment; no recipe takes other options.
case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage_error "unknown option $1" ;;
esac

need_file() {  # need_file PATH WHAT: a clear error naming the missing input
    [[ -f "$1" && -s "$1" ]] || die "missing input file: $1 ($2)"
}

# The console scripts: on PATH (an activated venv, pip install), else this checkout's .venv.
if ! command -v trelm-prepare >/dev/null 2>&1; then
    _repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    [[ -x "$_repo/.venv/bin/trelm-prepare" ]] ||
        die "trelm-prepare not found: activate the venv (. .venv/bin/activate) or pip install -e ."
    PATH="$_repo/.venv/bin:$PATH"
fi
PYTHON="$(dirname "$(command -v trelm-prepare)")/python"

run() { echo "+ $(printf '%q ' "$@")" >&2; "$@"; }  # prints the command, copy-paste ready

fetch_corpus() {  # step 1: clean, de-duplicate, split (train/valid/test) into $OUT/corpus
    local opt=()
    [[ -n "$VALID_SIZE" ]] && opt+=(--valid-size "$VALID_SIZE")
    [[ -n "$TEST_SIZE" ]] && opt+=(--test-size "$TEST_SIZE")
    [[ -n "$CACHE_DIR" ]] && opt+=(--cache-dir "$CACHE_DIR")
    run trelm-fetch-corpus --src-lang "$SRC_LANG" --lang "$TGT_LANG" --seed "$SEED" \
        --out "$OUT/corpus" "${opt[@]}" "$@"
    if [[ "$CORPUS_ONLY" == 1 ]]; then
        echo "CORPUS_ONLY=1: stopping after the corpus, $OUT/corpus (its report: corpus.json)"
        exit 0
    fi
}

prepare() {  # steps 2-6 (+ "$@"); a re-run skips every step whose outputs are there and valid
    local extra=() model=()
    eval "extra=($PREPARE_ARGS)"
    [[ -n "$SOURCE_MODEL" ]] && model=(--source-model "$SOURCE_MODEL")
    run trelm-prepare --src "$SRC_LANG" --tgt "$TGT_LANG" --out "$OUT" --corpus-dir "$OUT/corpus" \
        --vocab-size "$VOCAB_SIZE" --threads "$THREADS" --seed "$SEED" "${model[@]}" "$@" "${extra[@]}"
}

show_fairseq_preprocess() {  # what trelm-prepare's binarize step ran (fairseq_cli.preprocess)
    local d="$OUT" s="$SRC_LANG" t="$TGT_LANG" lang
    cat <<EOF

The binarize step above is fairseq's own fairseq-preprocess, one call per output folder, on
the sentencepiece-encoded text in $d/work/tok/ with the one shared dictionary $d/dict.txt.
By hand (trelm-prepare also checks every sentence length and removes the copies of the
dictionary and preprocess.log that fairseq-preprocess leaves in each --destdir):

EOF
    for lang in "$s" "$t"; do
        cat <<EOF
  fairseq-preprocess --only-source --srcdict $d/dict.txt --dataset-impl mmap --workers $THREADS \\
      --trainpref $d/work/tok/mono.$lang.train --validpref $d/work/tok/mono.$lang.valid \\
      --testpref $d/work/tok/mono.$lang.test --destdir $d/mono/$lang
EOF
    done
    cat <<EOF
  fairseq-preprocess --source-lang $s --target-lang $t --joined-dictionary --srcdict $d/dict.txt \\
      --dataset-impl mmap --workers $THREADS --trainpref $d/work/tok/para.train \\
      --validpref $d/work/tok/para.valid --testpref $d/work/tok/para.test --destdir $d/para
  rm -f $d/mono/$s/dict.txt $d/mono/$t/dict.txt $d/para/dict.$s.txt $d/para/dict.$t.txt \\
      $d/mono/$s/preprocess.log $d/mono/$t/preprocess.log $d/para/preprocess.log

The word alignments (para/*.gather.*) are not a fairseq-preprocess output: trelm-align writes
them from the binarized para/ files.
EOF
}

show_training() {
    cat <<EOF

Prepared: $OUT (layout: docs/data-layout.md; what was done: $OUT/prepare.json).  Next:
  trelm-stages $OUT runs/$SRC_LANG-$TGT_LANG --dry-run     # print the fairseq-train commands
  trelm-stages $OUT runs/$SRC_LANG-$TGT_LANG               # stages 1 -> 2a, 2b -> combine -> 4
  # one stage by hand, e.g. stage 1 (the arch is the source model's; trelm_minilm for the
  # embedded default; every stage's flags: trelm-stages --dry-run):
  fairseq-train $OUT --user-dir trelm_fairseq --task trelm_transfer --langs $SRC_LANG,$TGT_LANG \\
      --stage commonality --arch trelm_minilm --tri-layer --criterion trelm_loss \\
      --restore-file $OUT/init/model.pt --reset-optimizer --reset-dataloader --reset-meters \\
      --save-dir runs/$SRC_LANG-$TGT_LANG/1-commonality --optimizer adam --lr 3e-05 --max-tokens 4096 ...
EOF
}
