"""The data-preparation recipes in preprocess/ (bash), run offline on tiny generated data.

own_files.sh runs end to end (corpus -> vocab -> fairseq-preprocess -> alignments -> mapped
embeddings) with a tiny source model; the fairseq-preprocess calls it prints are run again and
must give the same bytes.  large_corpus.sh runs on a fake Wikipedia + OPUS layout (without the
embedding step), and stops with the missing file's name when one is not there.
libreoffice_help.sh and manpages.sh run their corpus step on a fake Debian download cache, with
an apt-get on PATH that fails the test if it is ever called.
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import (fake_cached_manpage, fake_cached_package, lexicon, make_pairs,  # noqa: E402
                           make_tiny_source_model, write_synthetic_corpus)

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "preprocess"
SPLITS = ("train", "valid", "test")
VENV_BIN = str(Path(sys.executable).parent)


def recipe(name, *args, cwd, **env):
    """Run preprocess/<name> with ``env`` on top of os.environ (the venv's tools first on PATH)."""
    full = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), THREADS="1")
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", str(RECIPES / name), *map(str, args)], cwd=cwd, env=full,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    corpus = write_synthetic_corpus(root / "raw")
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70] + ["▁ka", "##lo", ","]
    return {"root": root, "raw": corpus, "source": make_tiny_source_model(root / "source", words)}


@pytest.fixture(scope="module")
def own(inputs):
    """own_files.sh end to end: 300 pairs + 60 target monolingual lines."""
    raw, out = inputs["raw"], inputs["root"] / "data"
    p = ok(recipe("own_files.sh", raw / "train.en", raw / "train.tr", cwd=inputs["root"],
                  OUT=out, TGT_LANG="tr", MONO_TGT=raw / "mono.tr.train", SOURCE_MODEL=inputs["source"],
                  VOCAB_SIZE=120, VALID_SIZE=30, TEST_SIZE=30,
                  PREPARE_ARGS="--no-evaluate-both --map-args='--ft-epochs 2'"))
    return {"out": out, "proc": p}


def test_own_files_prepares_a_data_directory(own):
    out = own["out"]
    for f in ("dict.txt", "spm.model", "init/model.pt", "corpus/corpus.json", "prepare.json"):
        assert (out / f).is_file(), f
    for split in SPLITS:
        for ext in ("bin", "idx"):
            for lang in ("en", "tr"):
                assert (out / f"mono/{lang}/{split}.{ext}").stat().st_size > 0
            for name in ("en-tr.en", "en-tr.tr", "gather.en-tr", "gather.tr-en"):
                assert (out / f"para/{split}.{name}.{ext}").stat().st_size > 0, (split, name)
    # fairseq-preprocess's own copies of the dictionary are not left behind: dict.txt is the one
    assert not list(out.glob("mono/*/dict.txt")) and not list(out.glob("para/dict.*.txt"))
    assert len((out / "dict.txt").read_text(encoding="utf-8").splitlines()) == 120 - 3

    prep = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    corpus = json.loads((out / "corpus/corpus.json").read_text(encoding="utf-8"))
    assert prep["langs"] == ["en", "tr"] and prep["corpus_dir"] == str(out / "corpus")
    assert prep["steps"] == {"corpus": "given", "vocab": "done", "binarize": "done", "align": "done",
                             "import": "not needed", "source_head": "not needed", "embeddings": "done"}
    assert prep["vocab"]["vocab_size"] == 120 and prep["vocab"]["dict_symbols"] == 121
    assert prep["counts"]["pairs"] == corpus["parallel"]
    assert corpus["parallel"]["valid"] == 30 and corpus["parallel"]["test"] == 30
    assert sum(corpus["parallel"].values()) == 300
    assert [s["kind"] for s in corpus["sources"]] == ["parallel-files", "mono-files"]
    assert prep["binarized"]["para"] == corpus["parallel"]
    assert prep["alignment"]["coverage"]["en-tr"] > 0.5
    assert "precision_at_1" in prep["mapping"] and prep["init_checkpoint"] == str(out / "init/model.pt")
    # the next steps it prints
    assert f"trelm-stages {out} runs/en-tr" in own["proc"].stdout
    assert f"fairseq-train {out} --user-dir trelm_fairseq --task trelm_transfer" in own["proc"].stdout


def _shown_preprocess_calls(stdout):
    """The fairseq-preprocess commands the recipe printed, each as an argv (continuations joined)."""
    text = stdout.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.strip().startswith("fairseq-preprocess ")]


def test_shown_fairseq_preprocess_calls_reproduce_the_binarized_data(own, tmp_path):
    from fairseq import options
    from fairseq_cli import preprocess

    out = own["out"]
    calls = _shown_preprocess_calls(own["proc"].stdout)
    dests = [argv[argv.index("--destdir") + 1] for argv in calls]
    assert dests == [str(out / "mono/en"), str(out / "mono/tr"), str(out / "para")]
    for argv, dest in zip(calls, dests):
        mine = tmp_path / Path(dest).relative_to(out)
        argv[argv.index("--destdir") + 1] = str(mine)
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
        for f in sorted(Path(dest).glob("*.bin")) + sorted(Path(dest).glob("*.idx")):
            if ".gather." not in f.name:
                assert (mine / f.name).read_bytes() == f.read_bytes(), f
        # what the printed rm line removes: fairseq's dictionary copies and its log
        extra = {f.name for f in mine.iterdir()} - {f.name for f in Path(dest).iterdir()}
        assert extra == ({"dict.txt"} if "--only-source" in argv else {"dict.en.txt", "dict.tr.txt"}) | {
            "preprocess.log"}
        removed = [f"{dest}/{name}" for name in extra]
        assert all(r in own["proc"].stdout.replace("\\\n", " ").split() for r in removed), removed


def opus_wiki_layout(root, raw):
    """raw/en-tr as large_corpus.sh expects it, from the synthetic corpus."""
    layout = root / "raw" / "en-tr"
    (layout / "opus").mkdir(parents=True)
    for lang in ("en", "tr"):
        (layout / f"opus/WikiMatrix.en-tr.{lang}").write_bytes((raw / f"train.{lang}").read_bytes())
        text = "".join(p[lang == "tr"] + "\n" for p in make_pairs(120, 20 + (lang == "tr"), lexicon(0)))
        (layout / f"wiki.{lang}.txt").write_text(text, encoding="utf-8")
    return layout


def test_large_corpus_on_a_wikipedia_and_opus_layout(inputs, tmp_path):
    layout = opus_wiki_layout(tmp_path, inputs["raw"])
    out = tmp_path / "data"
    p = ok(recipe("large_corpus.sh", cwd=tmp_path, OUT=out, TGT_LANG="tr", OPUS_CORPORA="WikiMatrix",
                  MAX_MONO_LINES=50, SOURCE_MODEL=inputs["source"], VOCAB_SIZE=110, VALID_SIZE=20,
                  TEST_SIZE=20, PREPARE_ARGS="--no-init"))    # RAW_DIR: the default raw/en-tr
    corpus = json.loads((out / "corpus/corpus.json").read_text(encoding="utf-8"))
    assert [s["kind"] for s in corpus["sources"]] == ["parallel-files", "mono-files", "mono-src-files"]
    assert corpus["parallel"] == {"train": 260, "valid": 20, "test": 20}
    assert len((out / "input/wiki.tr.txt").read_text(encoding="utf-8").splitlines()) == 50
    assert layout == tmp_path / "raw/en-tr" and "--parallel raw/en-tr/opus/WikiMatrix.en-tr.en raw/en-tr/opus/" \
        "WikiMatrix.en-tr.tr --mono " in p.stderr and f"--mono-src {out}/input/wiki.en.txt" in p.stderr
    prep = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert prep["steps"]["align"] == "done" and prep["steps"]["embeddings"] == "not run"
    assert prep["vocab"]["dict_symbols"] == 111
    for split in SPLITS:
        assert (out / f"para/{split}.gather.tr-en.idx").is_file() and (out / f"mono/tr/{split}.bin").is_file()
    assert not (out / "init").exists()


def test_missing_inputs_stop_with_the_file_name(inputs, tmp_path):
    layout = opus_wiki_layout(tmp_path, inputs["raw"])
    os.unlink(layout / "opus/WikiMatrix.en-tr.tr")
    out = tmp_path / "data"
    p = recipe("large_corpus.sh", layout, cwd=tmp_path, OUT=out, TGT_LANG="tr")
    assert p.returncode == 2 and not out.exists()
    assert f"missing input file: {layout}/opus/WikiMatrix.en-tr.tr (OPUS WikiMatrix, Moses format, tr side)" in p.stderr
    p = recipe("large_corpus.sh", tmp_path / "nowhere", cwd=tmp_path, OUT=out, TGT_LANG="tr")
    assert p.returncode == 2 and f"missing input folder: {tmp_path}/nowhere" in p.stderr
    p = recipe("large_corpus.sh", layout, cwd=tmp_path, OUT=out, TGT_LANG="tr", OPUS_CORPORA="CCMatrix")
    assert p.returncode == 2 and "opus/CCMatrix.en-tr.en" in p.stderr
    raw = inputs["raw"]
    p = recipe("own_files.sh", raw / "train.en", raw / "train.tr", cwd=tmp_path, OUT=out,
               MONO_TGT=tmp_path / "mono.tr")
    assert p.returncode == 2 and f"missing input file: {tmp_path}/mono.tr (MONO_TGT: tr monolingual text)" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["own_files.sh", "large_corpus.sh", "libreoffice_help.sh", "manpages.sh"])
def test_usage(name, tmp_path):
    assert subprocess.run(["bash", "-n", str(RECIPES / name)]).returncode == 0
    assert os.access(RECIPES / name, os.X_OK)
    p = recipe(name, "--help", cwd=tmp_path)
    assert p.returncode == 0 and f"usage: preprocess/{name}" in p.stdout and "Steps:" in p.stdout
    p = recipe(name, "--bogus", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith(f"usage: preprocess/{name}") and "--bogus" in p.stderr
    if name == "own_files.sh":
        p = recipe(name, "only-one-file", cwd=tmp_path)
        assert p.returncode == 2 and "usage:" in p.stderr


# ----------------------------------------------------------------------------- Debian sources, offline

MAN_PAGE = ".TH \"LS\" 1\n.SH AÇIKLAMA\nGizli dosyaları da gösterir.\n.PP\nDizin içeriğini listeler.\n"


@pytest.fixture
def debian_cache(tmp_path):
    """A trelm-fetch-corpus cache with en-US + tr help pages and manpages-tr, and an apt-get
    on PATH that fails: the recipes must not download anything."""
    from trelm_fairseq.preprocess.libreoffice_help import HELP_ROOT

    cache = tmp_path / "cache"
    pairs = make_pairs(40, 5, lexicon(0))
    for pkg, sub, side in (("libreoffice-help-en-us", "en-US", 0), ("libreoffice-help-tr", "tr", 1)):
        page = fake_cached_package(cache, pkg) / HELP_ROOT / sub / "text" / "swriter" / "page.html"
        page.parent.mkdir(parents=True)
        paras = "".join(f'<p id="par_id{i}">{p[side]}</p>\n' for i, p in enumerate(pairs))
        page.write_text(f'<html><body><div id="DisplayArea">\n{paras}</div></body></html>\n', encoding="utf-8")
    fake_cached_manpage(cache, MAN_PAGE)
    nobin = tmp_path / "bin"
    nobin.mkdir()
    (nobin / "apt-get").write_text("#!/bin/sh\necho 'apt-get was called' >&2\nexit 99\n")
    (nobin / "apt-get").chmod(0o755)
    return {"CACHE_DIR": cache, "PATH": f"{nobin}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("name,man", [("libreoffice_help.sh", False), ("manpages.sh", True)])
def test_debian_recipes_build_their_corpus_from_the_cache(name, man, debian_cache, tmp_path):
    out = tmp_path / "data"
    p = ok(recipe(name, "tr", cwd=tmp_path, OUT=out, CORPUS_ONLY=1, VALID_SIZE=4, TEST_SIZE=4, **debian_cache))
    corpus = json.loads((out / "corpus/corpus.json").read_text(encoding="utf-8"))
    kinds = [s["kind"] for s in corpus["sources"]]
    assert kinds == ["libreoffice-help", "libreoffice-help"] + (["manpages"] if man else [])
    assert corpus["parallel"] == {"train": 32, "valid": 4, "test": 4}
    mono_tr = (out / "corpus/mono.tr.train").read_text(encoding="utf-8")
    assert ("Gizli dosyaları da gösterir." in mono_tr) is man
    assert (out / "corpus/train.module").is_file() and "CORPUS_ONLY=1" in p.stdout
    assert not (out / "dict.txt").exists()          # stopped after the corpus


def test_manpages_recipe_refuses_a_language_without_man_pages(debian_cache, tmp_path):
    p = recipe("manpages.sh", "ca", cwd=tmp_path, OUT=tmp_path / "data", **debian_cache)
    assert p.returncode != 0 and "no translated man pages for 'ca'" in p.stderr
    assert "libreoffice_help.sh" in p.stderr and not (tmp_path / "data").exists()
