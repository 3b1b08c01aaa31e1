#!/usr/bin/env python
"""Every advertised language's default stage-0 vocabulary: fetch its LibreOffice help corpus
(+ its man pages, as ``trelm-demo --lang X`` does) and run the vocabulary step alone on the full
corpus with trelm-prepare's default options; exit 1 if any language fails.

    scripts/check_languages.py                          # all help-corpus languages
    scripts/check_languages.py --langs vi hi km --json out.json
    scripts/check_languages.py --no-manpages            # the help pages alone

Needs Debian's apt-get and network to deb.debian.org on first use (debs are cached in
--cache-dir, corpora in --work and reused).  CPU-heavy (one or two sentencepiece trainings on
up to ~110k lines per language): run it under ``nice`` on a shared machine.
``make check-languages`` runs it; ``make test`` includes it with TRELM_CHECK_LANGUAGES=1
(tests/test_languages_vocab.py).  Prints a markdown table (the README's language list) and
writes the rows as JSON with --json.
"""
import argparse
import json
import os
import shlex
import sys
import traceback
from typing import Dict, List

from trelm_fairseq import fileio
from trelm_fairseq.cli import fetch_corpus
from trelm_fairseq.cli import prepare as prepare_cli
from trelm_fairseq.errors import TreLMError
from trelm_fairseq import languages
from trelm_fairseq.preprocess import corpora
from trelm_fairseq.preprocess import vocab as V
from trelm_fairseq.layout import SPLITS


def fetch(lang: str, out: str, cache_dir: str, manpages: bool) -> Dict:
    """The corpus trelm-prepare would fetch (reused when its corpus.json is there)."""
    report = os.path.join(out, "corpus.json")
    if not os.path.isfile(report):
        argv = ["--lang", lang, "--out", out, "--cache-dir", cache_dir] + ([] if manpages else ["--no-manpages"])
        corpora.build_corpus(fetch_corpus.parse_args(argv))
    with open(report, encoding="utf-8") as f:
        return json.load(f)


def check(lang: str, work: str, cache_dir: str, manpages: bool, vocab_argv: List[str]) -> Dict:
    row: Dict = {"lang": lang, "name": languages.get_language(lang).name, "manpages": manpages}
    corpus = os.path.join(work, lang, "corpus")
    try:
        row["corpus"] = fetch(lang, corpus, cache_dir, manpages).get("parallel")
        # trelm-prepare's own defaults, so this is the vocabulary `trelm-demo --lang X` gets
        args = prepare_cli.build_parser().parse_args(["--tgt", lang, "--out", "unused"] + vocab_argv)
        opts = V.vocab_options(args, "en", lang, args.source_model or V.default_source_model())
        stats = V.run_vocab(corpus, os.path.join(work, lang, "data"), opts, threads=args.threads, quiet=True)
    except TreLMError as e:
        row.update(ok=False, error=str(e))
        return row
    except Exception as e:  # a crash is a failed language too; the others still run
        row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return row
    enc, spm_stats = stats["encode"], stats["spm"]
    row.update(
        ok=True, pairs={s: enc["para"][s]["pairs"] for s in SPLITS},
        mono_train={lng: enc["mono"][lng]["train"]["sentences"] for lng in ("en", lang)},
        spm_lines=spm_stats["lines"], vocab_size=spm_stats["vocab_size"], rule=spm_stats["vocab_size_rule"],
        auto=spm_stats.get("auto"), dict_symbols=stats["dict"]["fairseq_symbols"], unk_rate=stats["dict"]["unk_rate"])
    return row


def markdown(rows: List[Dict]) -> str:
    out = ["| lang | language | pairs train / valid / test | target mono train | soft limit 16,000: pieces, "
           "rare | vocabulary (auto) | rare in it |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"]:
            out.append(f"| {r['lang']} | {r['name']} | FAILED: {r['error'].splitlines()[0][:120]} | | | | |")
            continue
        a, p = r.get("auto") or {}, r["pairs"]
        probe = f"{a['reached']:,}, {a['rare_share_at_reached']:.1%}" if a else "-"
        rare = f"{a.get('rare_share', a['rare_share_at_reached']):.1%}" if a else "-"
        out.append(f"| {r['lang']} | {r['name']} | {p['train']:,} / {p['valid']:,} / {p['test']:,} | "
                   f"{r['mono_train'][r['lang']]:,} | {probe} | {r['vocab_size']:,} | {rare} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="check_languages", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--langs", nargs="+", default=None,
                   help="language codes (default: every language with a help corpus: "
                        + ", ".join(languages.help_corpus_languages()) + ")")
    p.add_argument("--work", default=os.path.join(corpora.default_cache_dir(), "check-languages"),
                   help="corpora and vocabularies go here (default: %(default)s)")
    p.add_argument("--cache-dir", default=corpora.default_cache_dir(), help="deb cache (default: %(default)s)")
    p.add_argument("--no-manpages", dest="manpages", action="store_false", help="the help pages alone")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--vocab-args", default="", help="extra trelm-prepare vocabulary options, e.g. '--model-type bpe'")
    args = p.parse_args(argv)
    langs = args.langs or languages.help_corpus_languages()
    work = os.path.join(args.work, "help+man" if args.manpages else "help")
    rows = []
    for lang in langs:
        print(f"[check_languages] {lang} ...", flush=True)
        row = check(lang, work, args.cache_dir, args.manpages, shlex.split(args.vocab_args))
        print(f"[check_languages] {lang}: " + (f"{row['vocab_size']} pieces, pairs {row['pairs']}; {row['rule']}"
                                               if row["ok"] else f"FAILED: {row['error']}"), flush=True)
        rows.append(row)
    print(markdown(rows))
    if args.json:
        fileio.write_json(args.json, rows)
    failed = [r["lang"] for r in rows if not r["ok"]]
    print(f"[check_languages] {len(rows) - len(failed)}/{len(rows)} languages passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
