"""trelm-fetch-corpus: help-page extraction, alignment, man pages, splits, CLI (offline)."""
import gzip
import json
import os
import shutil
import subprocess

import pytest

from _prep_helpers import fake_cached_manpage, fake_cached_package
from trelm_fairseq.cli import fetch_corpus
from trelm_fairseq.errors import TreLMError
from trelm_fairseq import languages
from trelm_fairseq.preprocess import corpora
from trelm_fairseq.preprocess import libreoffice_help as lh
from trelm_fairseq.preprocess.manpages import groff_paragraphs, manpage_paragraphs

# ----------------------------------------------------------------------------- fixtures

PAGE = """<!DOCTYPE html>
<html lang="{lang}"><head><title>{title}</title>
<script>var x = "<p id='par_script'>not text</p>";</script></head>
<body>
<header><p dir="auto">LibreOffice Help</p></header>
<div id="DisplayArea">
<h1 id="hd_id1">{h1}</h1>
<p id="par_id2" class="paragraph">{p2}</p>
<p id="par_id3" class="paragraph">{p3}</p>
<p class="embedded">No id here, skipped.</p>
<table><tr><td><p id="par_id4" class="tablecontent">{p4}</p></td></tr></table>
<p id="par_id5">{p5}</p>
<p id="par_id6">{p6}</p>
<p id="bm_module"></p>
<p id="par_id7">{p7}</p>
</div></body></html>
"""

EN = dict(
    lang="en-US", title="Sum",
    h1="Sum &amp; Total",
    p2='Press <span id="sw_1" class="switchinline"><span hidden="true" class="MAC">'
       '<span class="keycode">Command</span></span><span hidden="true">'
       '<span class="keycode">Ctrl</span></span></span>+<span class="keycode">Enter</span>'
       '  to   <a href="x.html"><span class="emph">insert</span></a><br>a break.',
    p3="This paragraph is not translated.",
    p4='Adds <img src="i.png" alt="ICON"> numbers &lt;&gt; cells.',
    p5="OK",
    p6="12 + 34",
    p7="OK",
)
TR = dict(
    lang="tr", title="Toplam",
    h1="Toplam &amp; Tümü",
    p2='<span id="sw_1" class="switchinline"><span hidden="true" class="MAC">Command'
       '</span><span hidden="true">Ctrl</span></span>+Enter ile <span class="emph">ekle'
       '</span><br>bir kesme.',
    p3="This paragraph is not translated.",
    p4="Hücrelerdeki &lt;&gt; sayıları toplar.",
    p5="Tamam",
    p6="12 + 34",
    p7="Tamam",
)


def write_help_tree(root, pages):
    """pages: {relative path under text/: fields}; returns the text/ directory."""
    for rel, fields in pages.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(PAGE.format(**fields))
    return root


def make_fixture_trees(base):
    """en-US and tr help trees with two modules; returns (en text dir, tr text dir)."""
    en_pages = {"scalc/01/sum.html": EN,
                "swriter/guide/ok.html": dict(EN, h1="Writer guide", p2="Writer text.",
                                              p4="Insert a table.")}
    tr_pages = {"scalc/01/sum.html": TR,
                "swriter/guide/ok.html": dict(TR, h1="Writer kılavuzu", p2="Writer metni.",
                                              p4="Bir tablo ekle.")}
    en_dir = write_help_tree(os.path.join(base, "en-US", "text"), en_pages)
    tr_dir = write_help_tree(os.path.join(base, "tr", "text"), tr_pages)
    return en_dir, tr_dir


# ----------------------------------------------------------------------------- help pages

def test_parse_html_ids_nesting_entities_switches(tmp_path):
    en_dir, _ = make_fixture_trees(str(tmp_path))
    paras = lh.parse_html(os.path.join(en_dir, "scalc/01/sum.html"), "scalc/01/sum.html")
    by_id = {p.key[1]: p for p in paras}
    assert [p.key[1] for p in paras] == ["hd_id1", "par_id2", "par_id3", "par_id4", "par_id5",
                                        "par_id6", "bm_module", "par_id7"]
    assert all(p.module == "scalc" for p in paras)
    assert by_id["hd_id1"].text == "Sum & Total"                      # entity unescaped
    # default case of the platform switch only, nested tags flattened, <br> a space
    assert by_id["par_id2"].text == "Press Ctrl+Enter to insert a break."
    assert by_id["par_id4"].text == "Adds numbers <> cells."            # no img alt
    assert by_id["bm_module"].text == ""
    assert "par_script" not in by_id                                    # not in DisplayArea/script
    assert by_id["par_id5"].key == ("scalc/01/sum.html", "par_id5", 0)


def test_double_escaped_entities_unescaped():
    assert lh.clean_text("a &amp;lt; b  &#x41;") == "a &lt; b A"
    assert lh.clean_text('=IF(A1;"<"&E2)') == '=IF(A1;"<"&E2)'        # not an entity


def test_align_drops_untranslated_letterless_and_duplicates(tmp_path):
    en_dir, tr_dir = make_fixture_trees(str(tmp_path))
    en, tr = lh.parse_help_dir(en_dir), lh.parse_help_dir(tr_dir)
    assert len(en) == len(tr) == 16
    stats = lh.AlignStats()
    pairs = lh.align(en, tr, stats)
    got = [(p.en, p.tgt, p.module) for p in pairs]
    assert got == [
        ("Sum & Total", "Toplam & Tümü", "scalc"),
        ("Press Ctrl+Enter to insert a break.", "Ctrl+Enter ile ekle bir kesme.", "scalc"),
        ("Adds numbers <> cells.", "Hücrelerdeki <> sayıları toplar.", "scalc"),
        ("OK", "Tamam", "scalc"),
        ("Writer guide", "Writer kılavuzu", "swriter"),
        ("Writer text.", "Writer metni.", "swriter"),
        ("Insert a table.", "Bir tablo ekle.", "swriter"),
    ]
    # per page: par_id3 untranslated, par_id6 and bm_module without letters, par_id7 repeats
    # par_id5; across pages "OK" and the untranslated paragraph repeat
    assert stats.untranslated == 2
    assert stats.no_letters == 4
    assert stats.duplicate == 3                          # OK x3 beyond the first
    assert stats.pairs == 7


def test_majority_module_and_labelled_rows(tmp_path):
    en_dir, tr_dir = make_fixture_trees(str(tmp_path))
    en, tr = lh.parse_help_dir(en_dir), lh.parse_help_dir(tr_dir)
    rows, info = lh.labelled_paragraphs(en)
    texts = [t for _, t in rows]
    assert "OK" not in texts                       # seen under scalc and swriter: ambiguous
    assert "This paragraph is not translated." not in texts
    assert ("swriter", "Writer text.") in rows and ("scalc", "Sum & Total") in rows
    assert len(texts) == len(set(texts))           # de-duplicated
    rows_tr, info_tr = lh.labelled_paragraphs(tr, exclude=en)
    assert all(t != "This paragraph is not translated." for _, t in rows_tr)
    assert info_tr["untranslated"] == 2
    paras = [lh.Paragraph(("a", "x", 0), m, "t") for m in ("shared", "scalc", "scalc")]
    assert lh.majority_module(paras) == "scalc"


def test_extract_deb_and_reuse_cache(tmp_path):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not available")
    pkgroot = tmp_path / "pkg"
    make_fixture_trees(str(pkgroot / lh.HELP_ROOT))
    (pkgroot / "DEBIAN").mkdir()
    (pkgroot / "DEBIAN" / "control").write_text(
        "Package: libreoffice-help-en-us\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: fixture\n")
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    deb = cache / "debs" / "libreoffice-help-en-us_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkgroot), str(deb)],
                   check=True, capture_output=True)
    logs = []
    got_deb, root = lh.fetch_package("libreoffice-help-en-us", str(cache), logs.append)
    assert got_deb == str(deb)                      # present: not downloaded again
    assert os.path.isdir(lh.help_text_dir(root, "en-US"))
    assert logs == ["extracting libreoffice-help-en-us_1.0_all.deb ..."]
    logs.clear()
    lh.fetch_package("libreoffice-help-en-us", str(cache), logs.append)
    assert logs == []                               # extraction reused too
    with pytest.raises(TreLMError, match="missing"):
        lh.help_text_dir(root, "xx")


def test_download_without_apt_is_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # no apt-get on PATH
    with pytest.raises(TreLMError, match="apt-get not found"):
        lh.download_deb("libreoffice-help-tr", str(tmp_path / "cache"), lambda m: None)


# ----------------------------------------------------------------------------- man pages

MANPAGE = r""".ig
 header comment
..
.\" a comment
.TH "LS" 1 "2021" "GNU" "Kullanıcı Komutları"
.SH İSİM
ls \- dizin içeriğini \fBlisteler\fR
.SH AÇIKLAMA
Bu komut dosyaları
\fIlisteler\fP ve \(lqsıralar\(rq.
.TP 4
\fB\-a\fR, \fB\-\-all\fR
Gizli dosyaları da gösterir.
.nf
for x in *; do echo $x; done
.fi
.BR ls (1)
ve daha fazlası.
"""


def test_groff_paragraphs():
    assert groff_paragraphs(MANPAGE) == [
        "İSİM",
        "ls - dizin içeriğini listeler",
        "AÇIKLAMA",
        "Bu komut dosyaları listeler ve “sıralar”.",
        "Gizli dosyaları da gösterir.",
        "ls(1) ve daha fazlası.",
    ]
    assert groff_paragraphs(".so man1/ls.1\n") == []


def test_manpage_paragraphs_reads_gz_and_skips_bad(tmp_path):
    d = tmp_path / "tr" / "man1"
    d.mkdir(parents=True)
    with gzip.open(d / "ls.1.gz", "wb") as f:
        f.write(MANPAGE.encode())
    (d / "bad.1").write_bytes(b"Latin-1 \xe7 text\n")
    os.symlink("ls.1.gz", d / "dir.1.gz")
    stats = {}
    paras = manpage_paragraphs(str(tmp_path / "tr"), stats)
    assert len(paras) == 6
    assert stats == {"pages": 1, "pages_skipped": 1, "paragraphs": 6}


# ----------------------------------------------------------------------------- languages

def test_languages():
    assert languages.get_language("TR").help_package == "libreoffice-help-tr"
    zh = languages.get_language("zh_CN")
    assert (zh.code, zh.help_dir, zh.manpages_package, zh.manpages_dir) == (
        "zh-cn", "zh-CN", "manpages-zh", "zh_CN")
    assert not zh.spaces_between_words
    assert languages.get_language("pt-br").manpages_dir == "pt_BR"
    assert languages.get_language("ca").manpages_package is None
    for code in ("tr", "de", "zh-cn", "es", "fr", "ru", "vi", "id"):
        assert code in languages.LANGUAGES
    with pytest.raises(TreLMError) as e:
        languages.get_language("xx")
    assert "unknown language code 'xx'" in str(e.value) and "tr" in str(e.value)


def test_turkish_lowercase():
    assert languages.lower("İSTANBUL'DA IŞIK", "tr") == "istanbul'da ışık"
    assert languages.lower("ISTANBUL", "en") == "istanbul"
    assert "\u0307" not in languages.lower("İ", "tr")


# ----------------------------------------------------------------------------- splitting

def _pairs(n):
    return [(f"english sentence {i}", f"türkçe cümle {i}", None) for i in range(n)]


def test_split_deterministic_and_seeded():
    pairs = _pairs(200)
    a = corpora.split_pairs(pairs, 20, 30, seed=1)
    assert a == corpora.split_pairs(pairs, 20, 30, seed=1)
    b = corpora.split_pairs(pairs, 20, 30, seed=2)
    assert a["test"] != b["test"]
    assert [len(a[n]) for n in corpora.SPLITS] == [150, 20, 30]
    assert sorted(a["train"] + a["valid"] + a["test"]) == list(range(200))


def test_split_keeps_shared_texts_together():
    pairs = _pairs(100)
    # same English, different translations; same translation, different English
    pairs += [("english sentence 5", "başka çeviri", None),
              ("another english", "türkçe cümle 7", None)]
    for seed in range(10):
        idx = corpora.split_pairs(pairs, 10, 10, seed)
        for side in (0, 1):
            texts = {n: {pairs[i][side] for i in idx[n]} for n in corpora.SPLITS}
            assert not texts["train"] & texts["valid"]
            assert not texts["train"] & texts["test"]
            assert not texts["valid"] & texts["test"]


def test_held_out_sizes():
    assert corpora.held_out_size(None, 100000, "valid") == 1000
    assert corpora.held_out_size(None, 2000, "valid") == 100
    assert corpora.held_out_size(0.1, 500, "valid") == 50
    assert corpora.held_out_size(7, 500, "valid") == 7
    with pytest.raises(TreLMError, match="no training pairs"):
        corpora.split_pairs(_pairs(10), 5, 5, 1)


# ----------------------------------------------------------------------------- CLI

def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        fetch_corpus.cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--parallel" in out and "--cache-dir" in out and "zh-cn" in out


def test_cli_unknown_language_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fetch_corpus.cli_main(["--lang", "xx", "--out", str(tmp_path / "o"),
                          "--cache-dir", str(tmp_path / "c")])
    assert e.value.code == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err


def _user_files(tmp_path, n=60):
    en = [f"This is English sentence number {i}." for i in range(n)]
    tr = [f"Bu {i} numaralı Türkçe cümledir." for i in range(n)]
    en[3], tr[3] = "", "boş İngilizce"                   # empty side: skipped, counted
    en[4], tr[4] = en[5], tr[5]                          # duplicate pair: dropped
    en[6], tr[6] = "123", "456"                          # no letters: dropped
    (tmp_path / "u.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    (tmp_path / "u.tr").write_text("\n".join(tr) + "\n", encoding="utf-8")
    mono = ["Ek tek dilli bir satır.", "", tr[10], "Başka bir satır."]
    (tmp_path / "m.tr").write_text("\n".join(mono) + "\n", encoding="utf-8")
    return str(tmp_path / "u.en"), str(tmp_path / "u.tr"), str(tmp_path / "m.tr")


def test_cli_user_files(tmp_path, capsys):
    src, tgt, mono = _user_files(tmp_path)
    out = tmp_path / "out"
    argv = ["--lang", "tr", "--parallel", src, tgt, "--mono", mono, "--out", str(out),
            "--valid-size", "5", "--test-size", "0.1", "--seed", "3"]
    assert fetch_corpus.cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "parallel pairs: train 47, valid 5, test 5" in printed
    report = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    assert report["parallel"] == {"train": 47, "valid": 5, "test": 5}  # 57 kept of 60
    assert report["cleaning_dropped"]["parallel"] == {"no_letters": 1, "too_long": 0,
                                                      "duplicate": 1}
    assert report["sources"][0]["empty"] == 1 and report["sources"][1]["empty"] == 1
    assert not report["modules"] and not (out / "train.module").exists()
    assert not (out / "help.tr.tsv").exists()
    for split in corpora.SPLITS:
        assert len(_read(out / f"{split}.en")) == len(_read(out / f"{split}.tr"))
    # monolingual: train = parallel train T side + extra, never a valid/test line
    mono_train = _read(out / "mono.tr.train")
    held = set(_read(out / "mono.tr.valid")) | set(_read(out / "mono.tr.test"))
    assert not held & set(mono_train)
    assert "Ek tek dilli bir satır." in mono_train
    assert set(_read(out / "train.tr")) <= set(mono_train)
    assert _read(out / "mono.tr.valid") == _read(out / "valid.tr")
    assert len(mono_train) == len(set(mono_train))
    assert _read(out / "mono.en.test") == _read(out / "test.en")
    # same seed: identical files; other seed: different split
    out2, out3 = tmp_path / "out2", tmp_path / "out3"
    fetch_corpus.cli_main(argv[:-1] + ["3"] + ["--out", str(out2)])
    fetch_corpus.cli_main(argv[:-1] + ["4"] + ["--out", str(out3)])
    for name in ("train.en", "train.tr", "test.tr", "mono.tr.train"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()
    assert (out / "test.tr").read_bytes() != (out3 / "test.tr").read_bytes()


def test_cli_strict_and_bad_input(tmp_path, capsys):
    src, tgt, _ = _user_files(tmp_path)
    with pytest.raises(SystemExit) as e:
        fetch_corpus.cli_main(["--lang", "tr", "--parallel", src, tgt, "--strict",
                          "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert f"{src}:4: empty" in capsys.readouterr().err
    (tmp_path / "short.tr").write_text("bir\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        fetch_corpus.cli_main(["--lang", "tr", "--parallel", src, str(tmp_path / "short.tr"),
                          "--out", str(tmp_path / "o")])
    assert "different line counts" in capsys.readouterr().err
    assert not (tmp_path / "o" / "corpus.json").exists()


def test_cli_mono_only_is_split(tmp_path):
    lines = [f"Satır numarası {i} burada." for i in range(40)]
    (tmp_path / "m.tr").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    fetch_corpus.cli_main(["--lang", "tr", "--mono", str(tmp_path / "m.tr"), "--out", str(out),
                      "--valid-size", "4", "--test-size", "4"])
    got = {n: _read(out / f"mono.tr.{n}") for n in corpora.SPLITS}
    assert [len(got[n]) for n in corpora.SPLITS] == [32, 4, 4]
    assert sorted(sum(got.values(), [])) == sorted(lines)
    assert not (out / "train.tr").exists()


def _fake_cache(tmp_path):
    """A cache as trelm-fetch-corpus leaves it (debs + complete extractions): no apt needed."""
    cache = tmp_path / "cache"
    help_base = str(tmp_path / "trees")
    make_fixture_trees(help_base)
    for pkg, sub in (("libreoffice-help-en-us", "en-US"), ("libreoffice-help-tr", "tr")):
        root = fake_cached_package(cache, pkg)
        shutil.copytree(os.path.join(help_base, sub), root / lh.HELP_ROOT / sub)
    fake_cached_manpage(cache, MANPAGE)
    return cache


def test_cli_help_corpus_from_cache(tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path)
    monkeypatch.setenv("TRELM_CACHE", str(cache))          # the default cache location
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))    # proves nothing is downloaded
    out = tmp_path / "out"
    fetch_corpus.cli_main(["--lang", "tr", "--out", str(out), "--valid-size", "1",
                      "--test-size", "1"])
    report = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    assert report["parallel"] == {"train": 5, "valid": 1, "test": 1}
    assert report["modules"] is True
    en = sum((_read(out / f"{n}.en") for n in corpora.SPLITS), [])
    modules = sum((_read(out / f"{n}.module") for n in corpora.SPLITS), [])
    assert dict(zip(en, modules))["Writer text."] == "swriter"
    assert dict(zip(en, modules))["Sum & Total"] == "scalc"
    # man page text is monolingual training text only
    mono_train = _read(out / "mono.tr.train")
    assert "Gizli dosyaları da gösterir." in mono_train
    assert "This paragraph is not translated." in _read(out / "mono.en.train")
    # module-labelled paragraphs, and their split follows the parallel split
    rows = [line.split("\t") for line in _read(out / "help.tr.tsv")]
    assert ["swriter", "Writer metni."] in rows
    test_tr = set(_read(out / "test.tr"))
    split_rows = {n: [r.split("\t")[1] for r in _read(out / f"help.tr.{n}.tsv")]
                  for n in corpora.SPLITS}
    assert set(split_rows["test"]) == test_tr & {r[1] for r in rows}
    assert not set(split_rows["train"]) & test_tr
    assert sorted(sum(split_rows.values(), [])) == sorted(r[1] for r in rows)
    # a later run into the same directory replaces the whole layout: no stale module files
    src, tgt, _ = _user_files(tmp_path)
    fetch_corpus.cli_main(["--lang", "tr", "--parallel", src, tgt, "--out", str(out)])
    assert not (out / "train.module").exists() and not (out / "help.tr.tsv").exists()
    assert json.loads((out / "corpus.json").read_text(encoding="utf-8"))["modules"] is False
