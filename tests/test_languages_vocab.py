"""--vocab-size auto (the default): every corpus gets a vocabulary sized to it, not an error.

Small corpora (user files, a help + man-page corpus from a fake cache, synthetic text) run
here offline; the check over every advertised language's real corpus needs the network and
runs only with TRELM_CHECK_LANGUAGES=1 (scripts/check_languages.py).
"""
import json
import os
import random
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import (fake_cached_manpage, fake_cached_package, lexicon, make_pairs,  # noqa: E402
                           write_synthetic_corpus)
from test_main_job import _report as demo_report  # noqa: E402

from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.cli.demo import build_parser as demo_parser  # noqa: E402
from trelm_fairseq.comparison import vocab_line, write_report  # noqa: E402
from trelm_fairseq import languages  # noqa: E402
from trelm_fairseq.preprocess import corpora  # noqa: E402
from trelm_fairseq.cli import fetch_corpus  # noqa: E402
from trelm_fairseq.cli import prepare as prepare_cli  # noqa: E402
from trelm_fairseq.preprocess import prepare as P  # noqa: E402
from trelm_fairseq.preprocess import vocab as V  # noqa: E402
from trelm_fairseq.preprocess.libreoffice_help import HELP_ROOT  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def options(vocab_size="auto", model_type="unigram"):
    args = Namespace(lowercase="yes", character_coverage=None, vocab_size=vocab_size, model_type=model_type,
                     max_tokens=None, long="skip", seed=1, input_sentence_size=2_000_000, threads=1)
    return V.vocab_options(args, "en", "tr", None)


def spm_pieces(data: Path) -> int:
    return V.load_spm(str(data / "spm.model")).get_piece_size()


def zipf_lines(n: int, seed: int = 0):
    """Text with a long tail of rare words: sentencepiece's soft limit saturates on it."""
    rng = random.Random(seed)
    syl = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be", "fi", "ho", "ju"]
    words = ["".join(rng.choice(syl) for _ in range(rng.randint(2, 4))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(4, 10))) for _ in range(n)]


# ----------------------------------------------------------------------------- the option


def test_vocab_size_option_values():
    assert V.parse_vocab_size("auto") == "auto" and V.parse_vocab_size(" AUTO ") == "auto"
    assert V.parse_vocab_size("120") == 120 and V.parse_vocab_size(16000) == 16000
    with pytest.raises(TreLMError, match=r"--vocab-size 50: expected auto or at least 100"):
        V.parse_vocab_size(50)
    with pytest.raises(TreLMError, match=r"--vocab-size big: expected auto or an integer"):
        V.parse_vocab_size("big")
    # the defaults of trelm-prepare, trelm-vocab and trelm-demo are auto; integers stay integers
    assert prepare_cli.build_parser().parse_args(["--tgt", "tr", "--out", "x"]).vocab_size == "auto"
    assert prepare_cli.build_parser().parse_args(["--tgt", "tr", "--out", "x", "--vocab-size", "300"]).vocab_size == 300
    assert demo_parser().parse_args([]).vocab_size == "auto"
    assert demo_parser().parse_args(["--vocab-size", "8000"]).vocab_size == 8000
    with pytest.raises(SystemExit):
        demo_parser().parse_args(["--vocab-size", "lots"])


def test_step_key_options_unchanged_for_explicit_sizes():
    """An explicit size keeps the vocab step's options (and so finished markers) as they were;
    auto adds its rule's constants, so changing them redoes the step."""
    explicit, auto = options(120), options()
    assert explicit["vocab_size"] == 120 and "vocab_auto" not in explicit
    assert auto["vocab_size"] == "auto"
    assert auto["vocab_auto"] == {"cap": V.AUTO_VOCAB_CAP, "min_count": V.AUTO_MIN_COUNT,
                                  "max_rare_share": V.AUTO_MAX_RARE_SHARE}


# ----------------------------------------------------------------------------- the rule


def run_rule(reachable, supports):
    """auto_vocab_size with a fake sentencepiece that makes min(n, reachable) pieces and
    measured supports given in order; returns (size, record, sizes trained at)."""
    trained, answers = [], iter(supports)

    def train(n):
        trained.append(n)
        return min(n, reachable)

    size, info = V.auto_vocab_size(train, lambda: next(answers))
    return size, info, trained


def test_auto_rule_keeps_a_supported_vocabulary_and_shrinks_a_saturated_one():
    cap = V.AUTO_VOCAB_CAP
    # reaches the cap, 0.6% rare: one training, kept
    size, info, trained = run_rule(50000, [{"pieces": cap - 3, "rare": 100, "rare_multichar": 100}])
    assert (size, trained) == (cap, [cap]) and info["rule"].endswith("kept") and "retrained_at" not in info
    # cannot reach the cap (vi's figures), a third of it rare: retrained once, at what is supported
    size, info, trained = run_rule(14015, [{"pieces": 14012, "rare": 4869, "rare_multichar": 4700},
                                           {"pieces": 9312, "rare": 480, "rare_multichar": 400}])
    assert trained == [cap, 14015 - 4700] and size == 9315
    assert (info["reached"], info["retrained_at"], info["rare_share"]) == (14015, 9315, round(480 / 9312, 4))
    assert "retrained at the 9315 pieces" in info["rule"]
    # the rare pieces are all single characters, which cannot be dropped: kept
    size, info, trained = run_rule(140, [{"pieces": 137, "rare": 30, "rare_multichar": 0}])
    assert (size, trained) == (140, [cap]) and "single characters" in info["rule"]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_auto_never_errors_on_small_corpora(tmp_path, model_type):
    """Corpora far too small for the former fixed 16000 (and for the explicit size below)."""
    for n_train, n_mono in ((300, 60), (40, 0), (8, 0)):
        corpus = write_synthetic_corpus(tmp_path / f"c{n_train}", n_train=n_train, n_valid=3, n_test=3,
                                        n_mono=n_mono)
        data = tmp_path / f"{model_type}{n_train}"
        stats = V.run_vocab(str(corpus), str(data), options(model_type=model_type), threads=1, quiet=True)
        s = stats["spm"]
        assert s["vocab_size_option"] == "auto" and s["vocab_size_rule"].startswith("auto: ")
        assert 10 < s["vocab_size"] < 1000 and s["vocab_size"] == spm_pieces(data)
        assert stats["dict"]["fairseq_symbols"] == s["vocab_size"] + 1  # - unk/bos/eos + fairseq's 4
        assert stats["encode"]["para"]["train"]["pairs"] == n_train
    with pytest.raises(TreLMError, match="too small for this --vocab-size.*--vocab-size auto"):
        V.run_vocab(str(corpus), str(tmp_path / "explicit"), options(V.AUTO_VOCAB_CAP), threads=1, quiet=True)


def test_auto_shrinks_a_saturated_vocabulary_with_real_sentencepiece(tmp_path):
    text = tmp_path / "text"
    text.write_text("\n".join(zipf_lines(500)) + "\n", encoding="utf-8")
    s = V.train_sentencepiece([str(text)], str(tmp_path / "spm"), "auto", threads=1)
    a = s["auto"]
    assert a["reached"] < V.AUTO_VOCAB_CAP and a["rare_share_at_reached"] > V.AUTO_MAX_RARE_SHARE
    assert s["vocab_size"] <= a["retrained_at"] < a["reached"]
    assert a["rare_share"] < a["rare_share_at_reached"] / 2
    assert V.load_spm(str(tmp_path / "spm.model")).get_piece_size() == s["vocab_size"]
    support = V.rare_pieces(str(tmp_path / "spm.model"), text.read_text(encoding="utf-8").splitlines())
    assert round(support["rare"] / support["pieces"], 4) == a["rare_share"]
    # deterministic: the same text and seed give the same model bytes
    s2 = V.train_sentencepiece([str(text)], str(tmp_path / "again"), "auto", threads=1)
    assert s2 == s and (tmp_path / "spm.model").read_bytes() == (tmp_path / "again.model").read_bytes()


@pytest.mark.parametrize("vocab_size", ["auto", 120])
def test_a_model_cut_short_by_a_full_disk_is_a_clear_error(tmp_path, monkeypatch, vocab_size):
    """sentencepiece's C++ writer leaves a truncated model on a full disk without an error:
    reading it back must not end in protobuf's DecodeError (before), but name the output."""
    from collections import namedtuple

    text = tmp_path / "text"
    text.write_text("\n".join(zipf_lines(500)) + "\n", encoding="utf-8")
    real = V._train_spm

    def cut_short(train_txt, prefix, *args, **kwargs):
        real(train_txt, prefix, *args, **kwargs)
        with open(prefix + ".model", "r+b") as f:
            f.truncate(300)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(V, "_train_spm", cut_short)
    monkeypatch.setattr(V.shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    out = tmp_path / "spm"
    with pytest.raises(TreLMError, match=rf"^{out}.model: write failed: No space left on device \(errno 28\)"):
        V.train_sentencepiece([str(text)], str(out), vocab_size, threads=1)
    monkeypatch.setattr(V.shutil, "disk_usage", lambda path: usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(TreLMError, match=rf"^{out}.model: the model sentencepiece wrote cannot be read back "
                                         r"\(DecodeError: .*\): run again"):
        V.train_sentencepiece([str(text)], str(out), vocab_size, threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]  # no model, no temporary


def test_explicit_size_is_used_exactly(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus")
    stats = V.run_vocab(str(corpus), str(tmp_path / "d"), options(130), threads=1, quiet=True)
    assert stats["spm"]["vocab_size"] == 130 == spm_pieces(tmp_path / "d") and "auto" not in stats["spm"]
    assert stats["spm"]["vocab_size_rule"] == "--vocab-size 130: used exactly"


# ----------------------------------------------------------------------------- user files, man pages


def test_prepare_user_files_get_a_default_vocabulary(tmp_path):
    """`trelm-prepare --parallel a b --mono c` without --vocab-size on a small corpus."""
    c = write_synthetic_corpus(tmp_path / "files", n_train=200)
    data = tmp_path / "data"
    argv = ["--tgt", "tr", "--out", data, "--parallel", c / "train.en", c / "train.tr", "--mono", c / "mono.tr.train",
            "--threads", 1, "--no-init", "--lowercase", "yes"]
    s = P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))
    v = json.loads((data / "prepare.json").read_text(encoding="utf-8"))["vocab"]
    assert s["steps"]["vocab"] == "done" and v["vocab_size_option"] == "auto"
    assert v["vocab_size"] == spm_pieces(data) and v["dict_symbols"] == v["vocab_size"] + 1
    assert v["vocab_size_rule"].startswith("auto: ") and v["auto"]["reached"] >= v["vocab_size"]
    # the report of the main job states it
    line = vocab_line({"vocab": v})
    assert f"{v['vocab_size']} sentencepiece pieces" in line and v["vocab_size_rule"] in line
    assert vocab_line(None) == "" and vocab_line({"vocab": {"vocab_size": 16000}}) == "Vocabulary: --vocab-size 16000."
    write_report(dict(demo_report(), prepare={"vocab": v}), str(tmp_path / "results"))
    assert line in (tmp_path / "results" / "results.md").read_text(encoding="utf-8")
    # the step cache: the same default skips, an explicit size (even the same number) redoes it
    s = P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))
    assert s["steps"]["vocab"] == "skipped" and s["vocab"]["vocab_size"] == v["vocab_size"]
    s = P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv + ["--vocab-size", v["vocab_size"]]]))
    assert s["steps"]["vocab"] == "done" and s["vocab"]["vocab_size_option"] == v["vocab_size"]
    assert s["vocab"]["vocab_size_rule"] == f"--vocab-size {v['vocab_size']}: used exactly"


def fake_help_cache(root: Path, n_pairs: int = 400, n_man: int = 300) -> Path:
    """A download cache as trelm-fetch-corpus leaves it (complete extractions, no apt needed):
    en-US + tr help pages of ``n_pairs`` paragraphs and a Turkish man page of ``n_man``."""
    cache = root / "cache"
    pairs = make_pairs(n_pairs, 5, lexicon(0))
    for pkg, sub, side in (("libreoffice-help-en-us", "en-US", 0), ("libreoffice-help-tr", "tr", 1)):
        root_dir = fake_cached_package(cache, pkg)
        for m, module in enumerate(("swriter", "scalc")):
            page = root_dir / HELP_ROOT / sub / "text" / module / "page.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            paras = "".join(f'<p id="par_id{i}">{p[side]}</p>\n' for i, p in enumerate(pairs) if i % 2 == m)
            page.write_text(f'<html><body><div id="DisplayArea">\n{paras}</div></body></html>\n', encoding="utf-8")
    fake_cached_manpage(cache, ".TH \"LS\" 1\n" + "".join(f".PP\n{line}\n" for line in zipf_lines(n_man, seed=3)))
    return cache


def test_help_and_man_page_corpus_gets_a_default_vocabulary(tmp_path, monkeypatch):
    cache = fake_help_cache(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))    # proves nothing is downloaded
    corpus = tmp_path / "corpus"
    corpora.build_corpus(fetch_corpus.parse_args(["--lang", "tr", "--out", str(corpus), "--cache-dir", str(cache)]))
    report = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    assert any(s["kind"] == "manpages" and s["paragraphs"] > 200 for s in report["sources"])
    stats = V.run_vocab(str(corpus), str(tmp_path / "data"), options(), threads=1, quiet=True)
    s = stats["spm"]
    assert s["vocab_size"] == spm_pieces(tmp_path / "data") and s["vocab_size"] < s["auto"]["reached"]
    assert s["auto"]["rare_share"] < s["auto"]["rare_share_at_reached"]   # the man pages' long tail


def test_a_language_without_its_own_help_pages_is_not_offered(tmp_path, monkeypatch, capsys):
    """Debian's libreoffice-help-sk only links help/sk to the Czech pages."""
    assert "sk" not in languages.help_corpus_languages() and "tr" in languages.help_corpus_languages()
    assert len(languages.help_corpus_languages()) == len(languages.LANGUAGES) - 1
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    with pytest.raises(TreLMError, match=r"--lang sk: Debian's libreoffice-help-sk holds no Slovak help pages"):
        corpora.build_corpus(fetch_corpus.parse_args(["--lang", "sk", "--out", str(tmp_path / "o"),
                                                 "--cache-dir", str(tmp_path / "c")]))
    assert not (tmp_path / "c").exists()
    assert languages.check_language("sk") == "sk"   # still usable with one's own files
    with pytest.raises(SystemExit):
        fetch_corpus.cli_main(["--help"])
    offered = capsys.readouterr().out.split("for the help corpus:")[1].replace(",", " ").split()
    assert offered == languages.help_corpus_languages()


# ----------------------------------------------------------------------------- every language (opt-in)


@pytest.mark.skipif(os.environ.get("TRELM_CHECK_LANGUAGES") != "1",
                    reason="needs the network to Debian and a long CPU run: TRELM_CHECK_LANGUAGES=1 "
                           "(or make check-languages)")
def test_every_advertised_language_gets_a_default_vocabulary(tmp_path):
    out = tmp_path / "languages.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_languages.py"), "--json", str(out)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["lang"] for r in rows] == languages.help_corpus_languages()
    for r in rows:
        assert r["ok"] and 1000 < r["vocab_size"] <= V.AUTO_VOCAB_CAP and r["pairs"]["test"] > 0, r["lang"]
