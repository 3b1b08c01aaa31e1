"""trelm-prepare: the whole stage 0 into one data directory, step markers, --force, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import lexicon, make_tiny_source_model, write_synthetic_corpus  # noqa: E402

from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.cli import prepare as prepare_cli  # noqa: E402
from trelm_fairseq.preprocess import prepare as P  # noqa: E402

SPLITS = ("train", "valid", "test")


def run(argv):
    return P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))


def markers(data: Path):
    return {p.name: p.stat().st_mtime_ns for p in (data / ".prepare").glob("*.json")}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    corpus = write_synthetic_corpus(root / "corpus")
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70] + ["▁ka", "##lo", ","]
    source = make_tiny_source_model(root / "source", words)
    data = root / "data"
    base = ["--tgt", "tr", "--out", data, "--corpus-dir", corpus, "--source-model", source, "--vocab-size", 120,
            "--threads", 1, "--no-evaluate-both", "--map-args=--ft-epochs 2"]
    summary = run(base)
    return {"root": root, "corpus": corpus, "source": source, "data": data, "base": base, "summary": summary}


def test_full_run_writes_the_data_layout(env):
    data, s = env["data"], env["summary"]
    for f in ["dict.txt", "spm.model", "spm.vocab", "init/model.pt", "prepare.json"]:
        assert (data / f).is_file(), f
    for lang in ("en", "tr"):
        for split in SPLITS:
            assert (data / f"mono/{lang}/{split}.bin").is_file() and (data / f"mono/{lang}/{split}.idx").is_file()
    for split in SPLITS:
        for name in ("en-tr.en", "en-tr.tr", "gather.en-tr", "gather.tr-en"):
            for ext in ("bin", "idx"):
                assert (data / f"para/{split}.{name}.{ext}").is_file(), (split, name)
    assert s["steps"] == {"corpus": "given", "vocab": "done", "binarize": "done", "align": "done",
                          "import": "not needed", "source_head": "not needed", "embeddings": "done"}
    on_disk = json.loads((data / "prepare.json").read_text())
    assert on_disk["langs"] == ["en", "tr"] and on_disk["counts"]["pairs"] == {"train": 300, "valid": 30, "test": 30}
    assert on_disk["alignment"]["coverage"]["en-tr"] > 0.9
    assert on_disk["vocab"]["dict_symbols"] == 121 and on_disk["vocab"]["lowercase"] is True
    assert set(on_disk["seconds"]) >= {"vocab", "binarize", "align", "embeddings"}
    assert "precision_at_1" in on_disk["mapping"]
    # the initial checkpoint is a trelm model over the new vocabulary (+ <mask>)
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import load_model

    d = Dictionary.load(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    model, _ = load_model(str(data / "init/model.pt"), d)
    assert model.encoder.embed_tokens.weight.shape[0] == len(d)


def test_the_default_init_is_the_alignment_where_the_source_has_a_tokenizer(env, tmp_path):
    # env's source model has no tokenizer files: the default (auto) fell back to the map
    first = json.loads((env["data"] / "prepare.json").read_text())["mapping"]
    assert first["method"] == "supervised" and first["alignment"] is None and first["output_bias"] == "unigram"
    source = tmp_path / "source"
    source.mkdir()
    for f in ("model.pt", "dict.txt"):
        (source / f).write_bytes((env["source"] / f).read_bytes())
    words = [line.split()[0] for line in (env["source"] / "dict.txt").read_text(encoding="utf-8").splitlines()]
    (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n",
                                      encoding="utf-8")
    argv = [str(a) for a in env["base"]]
    argv[argv.index("--out") + 1], argv[argv.index("--source-model") + 1] = str(tmp_path / "data"), str(source)
    run(argv)
    m = json.loads((tmp_path / "data" / "prepare.json").read_text())["mapping"]
    assert m["method"] == "alignment" and m["output_bias"] == "unigram"
    assert m["alignment"]["aligned"] > 0 and m["alignment"]["aligned"] + m["alignment"]["map_fallback"] <= m["mapped"]


def test_rerun_skips_finished_steps_and_force_redoes_them(env):
    data = env["data"]
    before = markers(data)
    assert set(before) == {"vocab.json", "binarize.json", "align.json", "embeddings.json"}
    init_mtime = (data / "init/model.pt").stat().st_mtime_ns
    s = run(env["base"])
    assert {k: v for k, v in s["steps"].items() if k in ("vocab", "binarize", "align", "embeddings")} == {
        "vocab": "skipped", "binarize": "skipped", "align": "skipped", "embeddings": "skipped"}
    assert markers(data) == before and (data / "init/model.pt").stat().st_mtime_ns == init_mtime
    assert s["alignment"]["coverage"] == env["summary"]["alignment"]["coverage"]  # stats kept in the markers

    # a missing output: only that step (and nothing upstream) runs again
    os.unlink(data / "para/valid.gather.tr-en.idx")
    s = run(env["base"])
    assert s["steps"]["align"] == "done" and s["steps"]["vocab"] == "skipped" and s["steps"]["binarize"] == "skipped"
    assert (data / "para/valid.gather.tr-en.idx").is_file()

    # --force: everything again
    s = run(env["base"] + ["--force", "--no-init"])
    assert [s["steps"][k] for k in ("vocab", "binarize", "align")] == ["done"] * 3
    assert markers(data)["vocab.json"] != before["vocab.json"]


def test_changed_option_redoes_the_step_and_everything_after_it(env, tmp_path):
    data = env["data"]
    s = run(env["base"] + ["--no-init", "--vocab-size", 110])
    assert [s["steps"][k] for k in ("vocab", "binarize", "align")] == ["done"] * 3
    assert s["vocab"]["dict_symbols"] == 111
    s = run(env["base"] + ["--no-init", "--vocab-size", 110, "--samplers", 1])
    assert [s["steps"][k] for k in ("vocab", "binarize", "align")] == ["skipped", "skipped", "done"]
    # the old init/model.pt was built for the 120-piece vocabulary: not left behind to be trained on
    assert not (data / "init/model.pt").exists()


def test_user_files_go_through_the_corpus_step(env, tmp_path):
    c = env["corpus"]
    data = tmp_path / "data"
    s = run(["--tgt", "tr", "--out", data, "--parallel", c / "train.en", c / "train.tr", "--mono", c / "mono.tr.train",
             "--vocab-size", 110, "--threads", 1, "--no-init", "--lowercase", "yes"])
    assert s["steps"]["corpus"] == "done" and (data / "corpus/train.tr").is_file()
    assert sum(s["counts"]["pairs"].values()) == 300 and s["counts"]["pairs"]["valid"] > 0
    s = run(["--tgt", "tr", "--out", data, "--parallel", c / "train.en", c / "train.tr", "--mono", c / "mono.tr.train",
             "--vocab-size", 110, "--threads", 1, "--no-init", "--lowercase", "yes"])
    assert s["steps"]["corpus"] == "skipped" and s["steps"]["align"] == "skipped"


def test_mismatched_parallel_files_error_without_outputs(env, tmp_path):
    c = env["corpus"]
    short = tmp_path / "short.tr"
    short.write_text("".join((c / "train.tr").read_text(encoding="utf-8").splitlines(True)[:-3]), encoding="utf-8")
    data = tmp_path / "data"
    with pytest.raises(TreLMError, match="different line counts"):
        run(["--tgt", "tr", "--out", data, "--parallel", c / "train.en", short, "--no-init"])
    assert not (data / "dict.txt").exists() and not (data / ".prepare").exists()
    assert not (data / "corpus").exists() or not any((data / "corpus").iterdir())


def test_non_utf8_and_unknown_language_and_missing_source(env, tmp_path):
    c = env["corpus"]
    bad = tmp_path / "bad.tr"
    raw = (c / "train.tr").read_bytes().split(b"\n")
    raw[2] = b"caf\xe9"
    bad.write_bytes(b"\n".join(raw))
    data = tmp_path / "data"
    with pytest.raises(TreLMError, match=r"bad\.tr:3: not UTF-8"):
        run(["--tgt", "tr", "--out", data, "--parallel", c / "train.en", bad, "--no-init"])
    assert not (data / "dict.txt").exists()
    with pytest.raises(TreLMError, match="unknown language code 'xx'"):
        run(["--tgt", "xx", "--out", tmp_path / "d2", "--corpus-dir", c])
    assert not (tmp_path / "d2").exists()
    with pytest.raises(TreLMError, match="source model not found"):
        run(["--tgt", "tr", "--out", tmp_path / "d3", "--corpus-dir", c, "--source-model", tmp_path / "nope"])
    with pytest.raises(TreLMError, match="exclude each other"):
        run(["--tgt", "tr", "--out", tmp_path / "d4", "--corpus-dir", c, "--parallel", c / "train.en", c / "train.tr"])


def test_cli_exit_code_and_help(env, tmp_path):
    exe = Path(sys.executable).parent / "trelm-prepare"
    out = subprocess.run([str(exe), "--help"], stdout=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0 and "--corpus-dir" in out.stdout and "--force" in out.stdout
    out = subprocess.run([str(exe), "--tgt", "klingon", "--out", str(tmp_path / "d"), "--corpus-dir", str(env["corpus"])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 2 and "unknown language code 'klingon'" in out.stderr
    assert "Traceback" not in out.stderr


def test_misaligned_parallel_files_stop_before_anything_is_built(env, tmp_path, capsys):
    """Equal line counts, one side out of step from line 120 (real help pairs): trelm-prepare
    stops in the corpus step naming where the files part; trelm-fetch-corpus --alignment-check
    warn goes on and records the finding in corpus.json."""
    import json as _json

    from trelm_fairseq.cli import fetch_corpus as cli_fetch
    from trelm_fairseq.cli import prepare as cli_prepare

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "data", "help.en-tr.300.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    src, tgt = tmp_path / "mine.en", tmp_path / "mine.tr"
    src.write_text("".join(s + "\n" for s, _ in rows), encoding="utf-8")
    shifted = [t for _, t in rows]
    shifted = shifted[:119] + shifted[120:] + [shifted[119]]  # line 120 deleted, another appended
    tgt.write_text("".join(t + "\n" for t in shifted), encoding="utf-8")

    out = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        cli_prepare.cli_main(["--src", "en", "--tgt", "tr", "--out", str(out), "--parallel", str(src), str(tgt),
                              "--no-init", "--vocab-size", "200"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "parallel files look misaligned" in err and "--alignment-check warn" in err
    assert f"out of step around line 12" in err and f"of {src}" in err
    assert not (out / "dict.txt").exists() and not (out / "corpus" / "corpus.json").exists()

    corpus = tmp_path / "corpus"
    cli_fetch.cli_main(["--lang", "tr", "--out", str(corpus), "--parallel", str(src), str(tgt),
                        "--alignment-check", "warn"])
    printed = capsys.readouterr()
    assert "warning: parallel files may be misaligned" in printed.out + printed.err
    record = _json.loads((corpus / "corpus.json").read_text())
    check = [x for x in record["sources"] if x["kind"] == "parallel-files"][0]["alignment_check"]
    assert check["verdict"] == "misaligned" and check["mode"] == "warn" and check["shift"] == -1


def test_a_second_trelm_prepare_on_the_same_data_directory_stops_at_once(env, tmp_path, capsys):
    import subprocess
    import sys

    from trelm_fairseq.cli import prepare as cli_prepare

    data = tmp_path / "data"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from trelm_fairseq.fileio import exclusive\n"
        "with exclusive(sys.argv[2], 'trelm-prepare'):\n"
        "    print('held', flush=True); time.sleep(60)"), root, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            cli_prepare.cli_main(["--src", "en", "--tgt", "tr", "--out", str(data), "--no-init"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{data}: in use by trelm-prepare (pid {holder.pid})" in err
        assert sorted(p.name for p in data.iterdir()) == [".trelm.lock"]  # nothing else was written
    finally:
        holder.kill()
        holder.wait()
    from trelm_fairseq.fileio import exclusive

    with exclusive(str(data), "trelm-prepare"):  # the killed holder's lock went with it
        assert (data / ".trelm.lock").read_text().startswith("trelm-prepare (pid ")
        (data / "prepare.json").write_text("{}")
    assert (data / ".trelm.lock").read_text() == ""  # released: names no one
    # a run that stopped before writing anything leaves no folder holding only the lock
    fresh = tmp_path / "fresh" / "data"
    with pytest.raises(RuntimeError):
        with exclusive(str(fresh), "trelm-prepare"):
            raise RuntimeError("an early failure")
    assert not (tmp_path / "fresh").exists()
