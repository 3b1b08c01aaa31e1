"""Bad input and faults: each error says what, where and what was expected; CLIs exit
non-zero without a traceback; nothing half-written is left behind.  docs/reliability.md
lists every failure mode with the test that checks it (here or in the other test files).
"""
import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _cli import BIN, USER_DIR, cli_env, run_cli  # noqa: E402
from _prep_helpers import lexicon, make_tiny_source_model, write_synthetic_corpus  # noqa: E402
from _stages_helpers import trainer_command as fake_trainer_command  # noqa: E402
from _transfer_helpers import make_family, make_task, make_tiny_data_dir  # noqa: E402

import trelm_fairseq  # noqa: E402,F401  (registers)
from fairseq.data import Dictionary  # noqa: E402
from trelm_fairseq.checkpoint import (build_model, checkpoint_num_updates, load_checkpoint, model_config,  # noqa: E402
                                      save_checkpoint)
from trelm_fairseq.errors import TreLMError, find_trelm_error, running_fairseq_cli  # noqa: E402
from trelm_fairseq.fileio import write_json  # noqa: E402
from trelm_fairseq.stages import StagePlan, run_all  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("rel") / "data"), n_train=40, n_valid=8, n_test=4)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder):
    """Temporary files / folders of the atomic writers anywhere under folder."""
    from trelm_fairseq.fileio import temporary_owner

    return [str(p) for p in Path(folder).rglob("*")
            if p.name.startswith(".tmp") or p.name.endswith(".tmp") or temporary_owner(p.name) is not None]


# ----- write faults: disk full mid-way, read-only folder ------------------------------

class _FullDisk:
    """A file whose writes fail with ENOSPC once ``limit`` bytes are written (after
    writing what still fits, as a real full disk does)."""

    def __init__(self, f, limit):
        self._f, self._left = f, limit

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def disk_full_for(monkeypatch, path_part: str, limit: int = 100):
    """Every file opened through os.fdopen (the atomic writers' temp files) whose path
    contains ``path_part`` runs out of space after ``limit`` bytes.  Returns the hit list."""
    real = os.fdopen
    hits = []

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        mode = args[0] if args else kwargs.get("mode", "r")
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if any(c in mode for c in "wa") and path_part in name:
            hits.append(name)
            return _FullDisk(f, limit)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return hits


def read_only(monkeypatch, module):
    """``module``'s tempfile.mkstemp fails as on a read-only file system."""

    def mkstemp(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))

    monkeypatch.setattr(module.tempfile, "mkstemp", mkstemp)


def test_checkpoint_save_disk_full_and_read_only(tmp_path, monkeypatch):
    from trelm_fairseq import fileio

    d = Dictionary()
    for i in range(10):
        d.add_symbol(f"w{i}")
    cfg = model_config("trelm_tiny", tri_layer=True)
    model = build_model(cfg, d)
    path = tmp_path / "ck" / "model.pt"
    save_checkpoint(str(path), model, cfg)
    old = path.read_bytes()
    with monkeypatch.context() as m:
        hits = disk_full_for(m, str(tmp_path / "ck" / ".model.pt."), limit=5000)  # its temp file
        with pytest.raises(TreLMError) as e:
            save_checkpoint(str(path), model, cfg, meta={"v": 2})
    assert hits, "the fault was not injected"
    assert f"{path}: write failed: No space left on device (errno 28)" in str(e.value)
    assert path.read_bytes() == old and leftovers(tmp_path) == []  # old file intact, no temp file
    with monkeypatch.context() as m:
        read_only(m, fileio)  # the writer under save_checkpoint
        with pytest.raises(TreLMError, match=r"new\.pt: write failed: Read-only file system"):
            save_checkpoint(str(tmp_path / "ck" / "new.pt"), model, cfg)
    assert not (tmp_path / "ck" / "new.pt").exists()


def test_combine_cli_corrupted_parent_and_full_disk(tmp_path, monkeypatch, capsys):
    from trelm_fairseq.cli.combine import cli_main

    fam = make_family(tmp_path)
    out = tmp_path / "out" / "combined.pt"
    args = ["--upper", str(fam["transfer_upper"]), "--lower", str(fam["transfer_lower"]),
            "--parent", str(fam["parent"]), "-o", str(out)]
    # a truncated parent (e.g. a checkpoint_last.pt cut by a kill)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(fam["transfer_lower"].read_bytes()[:3000])
    with pytest.raises(SystemExit) as e:
        cli_main(args[:2] + ["--lower", str(bad)] + args[4:])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: {bad}: not a readable checkpoint (truncated or corrupted" in err
    assert "Traceback" not in err and not out.exists()
    # disk full while writing the combined checkpoint: exit 2, no (half-written) output, no temp file
    with monkeypatch.context() as m:
        hits = disk_full_for(m, str(out.parent), limit=20000)
        with pytest.raises(SystemExit) as e:
            cli_main(args)
    err = capsys.readouterr().err
    assert hits and e.value.code == 2 and f"error: {out}: write failed: No space left on device" in err
    assert not out.exists() and leftovers(tmp_path) == []
    cli_main(args)  # space again: it works, and the result loads
    assert load_checkpoint(str(out))["trelm"]["stage"] == "combine"


def test_prepare_disk_full_mid_way_leaves_no_half_written_file(tmp_path, monkeypatch, capsys):
    from trelm_fairseq.cli import prepare as prepare_cli
    from trelm_fairseq.preprocess import prepare as P

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=120, n_valid=10, n_test=10, n_mono=30)
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70]
    source = make_tiny_source_model(tmp_path / "source", words)
    data = tmp_path / "data"
    argv = ["--tgt", "tr", "--out", str(data), "--corpus-dir", str(corpus), "--source-model", str(source),
            "--vocab-size", "100", "--threads", "1", "--mapping", "none"]

    # 1. the disk fills up while dict.txt is written (vocab step, after spm.model / work/tok)
    with monkeypatch.context() as m:
        hits = disk_full_for(m, str(data / ".dict.txt."), limit=200)
        with pytest.raises(SystemExit) as e:
            prepare_cli.cli_main(argv)
    err = capsys.readouterr().err
    assert hits and e.value.code == 2 and "Traceback" not in err, err
    assert f"error: {data / 'dict.txt'}: write failed: No space left on device" in err
    assert not (data / "dict.txt").exists() and leftovers(data) == []
    assert not (data / ".prepare" / "vocab.json").exists()  # the step is not marked finished

    # 2. ... and again while init/model.pt is written (last step)
    with monkeypatch.context() as m:
        hits = disk_full_for(m, str(data / "init" / ".model.pt."), limit=4000)
        with pytest.raises(SystemExit) as e:
            prepare_cli.cli_main(argv)
    err = capsys.readouterr().err
    assert hits and e.value.code == 2 and f"error: {data / 'init' / 'model.pt'}: write failed" in err
    assert not (data / "init" / "model.pt").exists() and leftovers(data) == []
    assert sorted(p.name for p in (data / ".prepare").iterdir()) == ["align.json", "binarize.json", "vocab.json"]

    # 3. space again: only the failed step runs, and its output loads
    summary = P.run_prepare(prepare_cli.build_parser().parse_args(argv))
    assert [summary["steps"][k] for k in ("vocab", "binarize", "align", "embeddings")] == \
        ["skipped", "skipped", "skipped", "done"]
    assert load_checkpoint(str(data / "init" / "model.pt"))["model"]["encoder.embed_tokens.weight"].shape[0] == \
        len(Dictionary.load(str(data / "dict.txt"))) + 1

    # 4. the disk fills up inside fairseq-preprocess (binarize step, redone with --force): the
    #    binarized data of the previous run stays as it was, no temporary folder is left
    import fairseq_cli.preprocess

    before = {p: sha(p) for p in (data / "mono").rglob("*") if p.is_file()}

    def full_disk_preprocess(args):
        os.makedirs(args.destdir, exist_ok=True)
        with open(os.path.join(args.destdir, "train.bin"), "wb") as f:
            f.write(b"\0" * 100)  # a half-written file in fairseq's output folder ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full

    with monkeypatch.context() as m:
        m.setattr(fairseq_cli.preprocess, "main", full_disk_preprocess)
        with pytest.raises(SystemExit) as e:
            prepare_cli.cli_main(argv + ["--force"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: fairseq-preprocess failed for mono/en: OSError: [Errno 28] No space left" in err
    assert {p: sha(p) for p in (data / "mono").rglob("*") if p.is_file()} == before
    assert leftovers(data) == [] and not (data / ".prepare" / "binarize.json").exists()

    # a read-only output folder: a clear error before anything is written
    with monkeypatch.context() as m:
        from trelm_fairseq import fileio

        read_only(m, fileio)
        with pytest.raises(SystemExit) as e:
            prepare_cli.cli_main(argv[:3] + [str(tmp_path / "ro")] + argv[4:])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "write failed: Read-only file system" in err and str(tmp_path / "ro") in err


def test_stage_marker_write_failure_is_clear(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        hits = disk_full_for(m, str(tmp_path), limit=10)
        with pytest.raises(TreLMError, match=r"stage_done\.json: write failed: No space left on device"):
            write_json(str(tmp_path / "stage_done.json"), {"x": "y" * 100})  # as stages writes its marker
    assert hits and not (tmp_path / "stage_done.json").exists() and leftovers(tmp_path) == []


def test_align_disk_full_leaves_neither_direction(tmp_path, monkeypatch, capsys):
    """The disk fills up while trelm-align writes the second direction's gather dataset: a
    clear error naming it, exit 2, and no gather dataset of either direction (they are written
    in one temporary folder and moved into para/ together), no temporary left."""
    import fairseq.data.indexed_dataset as indexed
    from trelm_fairseq.cli import align as align_cli
    from trelm_fairseq.cli import prepare as prepare_cli
    from trelm_fairseq.preprocess import prepare as P

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=80, n_valid=8, n_test=8, n_mono=20)
    data = tmp_path / "data"
    P.run_prepare(prepare_cli.build_parser().parse_args(
        ["--tgt", "tr", "--out", str(data), "--corpus-dir", str(corpus), "--vocab-size", "100", "--threads", "1",
         "--no-init"]))
    for p in (data / "para").glob("*.gather.*"):
        p.unlink()  # as before the first alignment

    real_open = open
    hits = []

    def full_disk_open(path, mode="r", *a, **k):  # fairseq's builder opens its .bin by name
        f = real_open(path, mode, *a, **k)
        if "w" in mode and "gather.tr-en" in str(path):
            hits.append(str(path))
            return _FullDisk(f, 20)
        return f

    argv = ["--data", str(data), "--tgt", "tr", "--threads", "1"]
    with monkeypatch.context() as m:
        m.setattr(indexed, "open", full_disk_open, raising=False)
        with pytest.raises(SystemExit) as e:
            align_cli.cli_main(argv)
    err = capsys.readouterr().err
    assert hits and e.value.code == 2 and "Traceback" not in err, err
    assert f"error: {data / 'para' / 'train.gather.tr-en.bin'}: write failed: No space left on device" in err
    assert sorted((data / "para").glob("*.gather.*")) == []  # neither direction
    assert leftovers(data) == []
    assert align_cli.cli_main(argv) == 0  # space again: both directions of every split
    assert len(list((data / "para").glob("*.gather.*"))) == 3 * 2 * 2


def test_same_language_twice_is_refused_before_anything_is_written(tmp_path, capsys):
    """--src en --tgt en (trelm-fetch-corpus: --src-lang en --lang en): a clear error up front,
    exit 2, no output folder, instead of a traceback in binarize and leftovers."""
    from trelm_fairseq.cli import align, fetch_corpus, prepare, vocab

    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=20, n_valid=4, n_test=4, n_mono=5)
    out = tmp_path / "out"
    calls = {
        "trelm-vocab": (vocab, ["--corpus-dir", str(corpus), "--src", "en", "--tgt", "EN", "--out", str(out)]),
        "trelm-align": (align, ["--data", str(out), "--src", "en", "--tgt", "en"]),
        "trelm-prepare": (prepare, ["--src", "en", "--tgt", "en", "--out", str(out), "--corpus-dir", str(corpus)]),
        "trelm-fetch-corpus": (fetch_corpus, ["--lang", "en", "--out", str(out), "--parallel",
                                              str(corpus / "train.en"), str(corpus / "train.tr")]),
    }
    for name, (module, argv) in calls.items():
        with pytest.raises(SystemExit) as e:
            module.cli_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err, (name, err)
        assert "expected two different languages" in err, (name, err)
        assert not out.exists(), name


# ----- checkpoints of another architecture / vocabulary / stage -----------------------

def test_state_dict_of_another_shape_vocabulary_or_tri_layer(tiny):
    d = Dictionary.load(tiny["dict"])
    d.add_symbol("<mask>")
    state = load_checkpoint(tiny["init"])["model"]
    wide = build_model(model_config("trelm_tiny", tri_layer=True, encoder_ffn_embed_dim=48), d)
    with pytest.raises(TreLMError, match=r"tensor\(s\) of the checkpoint do not fit .*checkpoint \(64,\) vs "
                                         r"model \(48,\).*another architecture"):
        wide.load_state_dict(state)
    d2 = Dictionary.load(tiny["dict"])
    for w in ("x1", "x2", "<mask>"):
        d2.add_symbol(w)
    with pytest.raises(TreLMError, match=r"vocabulary has 38 rows, the model built here has 40"):
        build_model(model_config("trelm_tiny", tri_layer=True), d2).load_state_dict(state)
    with pytest.raises(TreLMError, match="the checkpoint has a TRILayer, the model built here has none: add --tri-layer"):
        build_model(model_config("trelm_tiny", tri_layer=False), d).load_state_dict(state)
    no_tri = build_model(model_config("trelm_tiny", tri_layer=False), d).state_dict()
    with pytest.raises(TreLMError, match="has a TRILayer .* but the checkpoint has none"):
        build_model(model_config("trelm_tiny", tri_layer=True), d).load_state_dict(no_tri)
    build_model(model_config("trelm_tiny", tri_layer=True), d).load_state_dict(state)  # the right one loads


def fake_plan(data, out, **kw):
    return StagePlan(str(data), str(out), langs="en,tr", updates={"1": 2, "2": 2, "4": 2},
                     trainer=fake_trainer_command(), **kw)


def quiet(plan, **kw):
    lines = []
    run_all(plan, log=lines.append, **kw)
    return "\n".join(lines)


def test_stage_runner_checkpoint_faults(tiny, tmp_path, monkeypatch, fake):
    calls = fake
    out = tmp_path / "out"
    # another architecture than the init checkpoint's: refused before anything runs
    with pytest.raises(TreLMError, match=r"init/model.pt \(where stage 1 starts\): model field 'encoder_layers' is 4, "
                                         r"but the stages train the model of --arch trelm_minilm"):
        quiet(fake_plan(tiny["data"], out, arch="trelm_minilm"), stages="1")
    assert not calls.exists()

    quiet(fake_plan(tiny["data"], out), stages="1")
    s2a = out / "2a-transfer_upper"
    monkeypatch.setenv("FAKE_FAIL_STAGE", "transfer_upper")
    monkeypatch.setenv("FAKE_FAIL_AT", "1")
    with pytest.raises(TreLMError, match="failed"):
        quiet(fake_plan(tiny["data"], out), stages="2a")
    monkeypatch.delenv("FAKE_FAIL_STAGE")
    n_calls = len(calls.read_text().splitlines())

    # 2a's checkpoint_last.pt truncated and no interval checkpoint to fall back to: say what to delete
    last = s2a / "checkpoint_last.pt"
    good = last.read_bytes()
    last.write_bytes(good[:500])
    (s2a / "checkpoint_best.pt").unlink()
    with pytest.raises(TreLMError, match=rf"stage 2a \(transfer_upper\): {last} is not a readable checkpoint .*"
                                         rf"no intact checkpoint_<epoch>_<updates>.pt .*delete {last}"):
        quiet(fake_plan(tiny["data"], out), stages="2a")
    assert last.read_bytes() == good[:500] and len(calls.read_text().splitlines()) == n_calls

    # the data directory re-made with another vocabulary since: the stage refuses to resume
    shutil.copy(tiny["dict"], tmp_path / "dict.bak")
    last.write_bytes(good)
    with open(tiny["dict"], "a", encoding="utf-8") as f:
        f.write("extra1 1\nextra2 1\n")
    try:
        with pytest.raises(TreLMError, match=r"checkpoint_last.pt \(stage 2a's own checkpoint to resume\): "
                                             r"vocabulary of 38 rows, but .*dict.txt gives 40"):
            quiet(fake_plan(tiny["data"], out), stages="2a")
    finally:
        shutil.copy(tmp_path / "dict.bak", tiny["dict"])
    assert len(calls.read_text().splitlines()) == n_calls
    text = quiet(fake_plan(tiny["data"], out), stages="2a")  # all fixed: resumes and finishes
    assert f"resuming from {last} (1 updates)" in text and (s2a / "stage_done.json").is_file()

    # a damaged stage marker (written atomically, so only by hand or a broken disk)
    (s2a / "stage_done.json").write_text('{"stage": "2a", "upd')
    with pytest.raises(TreLMError, match=rf"{s2a}/stage_done.json: unreadable stage marker .*delete it to redo"):
        quiet(fake_plan(tiny["data"], out), stages="2a")


# ----- data directory: missing split, unknown language ---------------------------------

def test_task_missing_split_unknown_language_empty_file(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    for ext in ("bin", "idx"):
        (data / "mono" / "en" / f"valid.{ext}").unlink()
    task = make_task(str(data), "commonality")
    task.load_dataset("train")  # the other splits are fine
    with pytest.raises(TreLMError, match=rf"{data}/mono/en/valid.bin: monolingual en text not found "
                                         rf"\(expected a fairseq indexed dataset {data}/mono/en/valid.bin/.idx\)"):
        task.load_dataset("valid")
    task = make_task(str(data), "transfer_upper", langs="en,xx")
    with pytest.raises(TreLMError, match=rf"{data}/para/train.en-xx.en.bin: source sentences not found"):
        task.load_dataset("train")
    (data / "para" / "test.gather.en-tr.bin").write_bytes(b"")
    with pytest.raises(TreLMError, match=r"test.gather.en-tr.bin: gather index: empty file"):
        make_task(str(data), "transfer_upper").load_dataset("test")


# ----- inside fairseq-train: clear messages, no traceback ---------------------------------

def test_error_chain_and_cli_detection():
    inner = TreLMError("what went wrong")
    try:
        try:
            raise inner
        except TreLMError:
            raise Exception("Cannot load model parameters from checkpoint x.pt")
    except Exception as outer:
        assert find_trelm_error(outer) is inner
    assert find_trelm_error(ValueError("x")) is None
    assert running_fairseq_cli("/venv/bin/fairseq-train") and running_fairseq_cli("/x/site-packages/fairseq_cli/train.py")
    assert not running_fairseq_cli("/venv/bin/pytest") and not running_fairseq_cli("")


def _fairseq_train(paths, save_dir, *extra):
    return [str(BIN / "fairseq-train"), paths["data"], "--user-dir", USER_DIR, "--task", "trelm_transfer",
            "--langs", "en,tr", "--stage", "transfer_upper", "--arch", "trelm_tiny", "--tri-layer",
            "--criterion", "trelm_loss", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "256",
            "--tokens-per-sample", "32", "--required-batch-size-multiple", "1", "--save-dir", str(save_dir),
            "--max-update", "2", "--num-workers", "0", *extra]


def test_fairseq_train_errors_are_clear_messages(tiny, tmp_path):
    """Three broken fairseq-train runs (started together): a missing valid split, a
    --restore-file of another shape, a truncated checkpoint_last.pt."""
    nosplit = tmp_path / "nosplit"
    shutil.copytree(tiny["data"], nosplit)
    for ext in ("bin", "idx"):
        (nosplit / "para" / f"valid.gather.en-tr.{ext}").unlink()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copy(tiny["init"], damaged / "checkpoint_1_4.pt")  # an intact interval checkpoint ...
    (damaged / "checkpoint_last.pt").write_bytes(Path(tiny["init"]).read_bytes()[:2000])  # ... its copy cut short
    runs = {
        "nosplit": _fairseq_train(dict(tiny, data=str(nosplit)), tmp_path / "ck1", "--restore-file", tiny["init"],
                                  "--reset-optimizer", "--reset-dataloader", "--reset-meters"),
        "shape": _fairseq_train(tiny, tmp_path / "ck2", "--encoder-ffn-embed-dim", "48", "--restore-file",
                                tiny["init"], "--reset-optimizer", "--reset-dataloader", "--reset-meters"),
        "damaged": _fairseq_train(tiny, damaged),
    }
    procs = {k: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
             for k, cmd in runs.items()}
    outs = {k: p.communicate(timeout=300)[0] for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode not in (0, None), (k, outs[k][-2000:])
        assert "Traceback" not in outs[k], (k, outs[k][-3000:])
        assert "(set TRELM_TRACEBACK=1 for the full traceback)" in outs[k]

    gather = nosplit / "para" / "valid.gather.en-tr"
    assert f"error: {gather}.bin: gather index not found (expected a fairseq indexed dataset {gather}.bin/.idx)" \
        in outs["nosplit"]
    assert f"error: Cannot load model parameters from checkpoint {tiny['init']}" in outs["shape"]
    assert "error: 15 tensor(s) of the checkpoint do not fit the model built here, first encoder.layers.0.fc1.bias: " \
           "checkpoint (64,) vs model (48,)" in outs["shape"]
    last = damaged / "checkpoint_last.pt"
    assert f"error: {last}: not a readable checkpoint (truncated or corrupted" in outs["damaged"]
    assert f"The newest intact checkpoint next to it is {damaged / 'checkpoint_1_4.pt'} (0 updates): copy it over " \
           f"{last} to resume from there" in outs["damaged"]


def test_fairseq_train_stamps_its_checkpoints_and_every_reader_checks_the_stamp(tiny, tmp_path, caplog):
    """fairseq-train under the plugin's task records the dictionary's fingerprint and the
    language pair (task state); resuming with a re-made vocabulary of the same size or with
    swapped --langs is refused, and so is reading the checkpoint with the wrong data."""
    from trelm_fairseq.checkpoint import check_vocabulary, dictionary_fingerprint, load_dictionary
    from trelm_fairseq.probes import probe_checkpoint

    save = tmp_path / "ck"
    argv = _fairseq_train(tiny, save, "--stage", "commonality", "--restore-file", tiny["init"],
                          "--reset-optimizer", "--reset-dataloader", "--reset-meters")
    run_cli("fairseq-train", argv[1:])
    last = save / "checkpoint_last.pt"
    state = load_checkpoint(str(last))
    dictionary = load_dictionary(tiny["dict"])
    assert state["task_state"] == {"dictionary_fingerprint": dictionary_fingerprint(dictionary), "langs": ["en", "tr"]}

    # the same data directory with a re-made vocabulary of the same size (one symbol renamed)
    other = tmp_path / "other"
    shutil.copytree(tiny["data"], other)
    lines = (other / "dict.txt").read_text(encoding="utf-8").splitlines()
    lines[-1] = "zz_renamed " + lines[-1].split(" ", 1)[1]
    (other / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    resumes = {"vocab": (dict(tiny, data=str(other)), "en,tr"), "langs": (tiny, "tr,en")}
    for case, (paths, langs) in resumes.items():
        copy = tmp_path / f"ck-{case}"
        shutil.copytree(save, copy)
        argv = _fairseq_train(paths, copy, "--stage", "commonality", "--max-update", "4")
        argv[argv.index("--langs") + 1] = langs
        proc = run_cli("fairseq-train", argv[1:], check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
        if case == "vocab":
            assert (f"error: {copy}/checkpoint_last.pt: made for another vocabulary than the dictionary of --data "
                    f"{other} (dictionary fingerprint {dictionary_fingerprint(dictionary)} in the checkpoint"
                    in proc.stdout), proc.stdout[-3000:]
        else:
            assert (f"error: {copy}/checkpoint_last.pt: trained with the language pair en,tr (language ids 0,1 in "
                    "that order), but --langs gives tr,en" in proc.stdout), proc.stdout[-3000:]
        assert checkpoint_num_updates(str(copy / "checkpoint_last.pt")) == 2  # nothing trained, nothing written

    # the readers: the probe with the other data directory or the pair swapped
    with pytest.raises(TreLMError, match=rf"{last}: made for another vocabulary than {other}/dict.txt"):
        probe_checkpoint(str(last), str(other), ["en", "tr"], target_mlm=False)
    with pytest.raises(TreLMError, match=rf"{last}: trained with the language pair en,tr .*but the probe's "
                                         r"language pair .* gives tr,en"):
        probe_checkpoint(str(last), tiny["data"], ["tr", "en"], target_mlm=False)
    # a checkpoint written before the stamp: a warning, the size still checked
    state.pop("task_state")
    with caplog.at_level("WARNING"):
        check_vocabulary(state, "old.pt", dictionary, tiny["dict"])
    assert f"old.pt: records no dictionary fingerprint (written before checkpoints were stamped): only its size " \
           f"was compared with {tiny['dict']}" in caplog.text


def test_fairseq_train_stops_on_a_diverged_loss_before_saving_it(tiny, tmp_path):
    """An exploding loss (--lr 1e3) stops fairseq-train with the update named; no checkpoint
    of the diverged weights (update u - 1 on) is written."""
    save = tmp_path / "ck"
    argv = _fairseq_train(tiny, save, "--stage", "commonality", "--restore-file", tiny["init"], "--reset-optimizer",
                          "--reset-dataloader", "--reset-meters", "--max-update", "30", "--save-interval-updates", "1",
                          "--log-format", "json", "--log-interval", "1")
    argv[argv.index("--lr") + 1] = "1e3"
    proc = run_cli("fairseq-train", argv[1:], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    m = re.search(r"error: the training loss diverged at update (\d+) \((.*?)\): a rerun with the same settings would "
                  r"repeat it\. Checkpoints saved at update (\d+) or later hold the diverged weights", proc.stdout)
    assert m, proc.stdout[-3000:]
    update, bad = int(m.group(1)), int(m.group(3))
    assert bad == update - 1
    # fairseq saved update u - 1 before its loss could be seen: nothing after it, and the
    # message names it (trelm-stages sets it aside: test_stages.py)
    saved = [checkpoint_num_updates(str(p)) for p in save.glob("checkpoint*.pt")]
    assert saved and max(saved) == bad, (saved, bad)
    print(m.group(0))


def test_a_full_disk_while_fairseq_saves_a_checkpoint_names_the_checkpoint(tmp_path, monkeypatch):
    """Inside fairseq-train (the plugin's guard): the checkpoint whose save failed is named and
    its half-written file removed.  trelm-stages then reports that stage error, not the summary
    (stages.json) it could not update on the same full disk."""
    script = f"""
import errno, os, sys, torch
sys.argv[0] = "fairseq-train"
from trelm_fairseq.checkpoint import guard_fairseq_checkpoint_loading
from trelm_fairseq.errors import TreLMError
from fairseq import checkpoint_utils
guard_fairseq_checkpoint_loading()
def full(obj, f, *a, **k):
    f.write(b"PK" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
torch.save = full
target = {str(tmp_path / "checkpoint_1_4.pt")!r}
try:
    checkpoint_utils.torch_persistent_save({{"model": {{}}}}, target)
except TreLMError as e:
    print("error:", e)
print(sorted(os.listdir({str(tmp_path)!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=cli_env(), timeout=120).stdout
    assert f"error: {tmp_path / 'checkpoint_1_4.pt'}: write failed: No space left on device (errno 28)" in out, out
    assert out.strip().endswith("[]"), out  # no checkpoint_1_4.pt.tmp left

    tiny_data = make_tiny_data_dir(str(tmp_path / "data"), n_train=8, n_valid=4, n_test=4)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("FAKE_FAIL_STAGE", "commonality")
    monkeypatch.setenv("FAKE_FAIL_AT", "1")
    monkeypatch.setenv("FAKE_FAIL_MESSAGE", "error: /x/1-commonality/checkpoint_1_2.pt: write failed: No space left on "
                                            "device (errno 28); nothing was written there")
    run = tmp_path / "run"
    from trelm_fairseq import stages as S
    from trelm_fairseq.stages import runner

    def summary_full(plan):
        raise TreLMError(f"{run / 'stages.json'}: write failed: No space left on device (errno 28)")

    monkeypatch.setattr(runner, "write_summary", summary_full)
    lines = []
    with pytest.raises(S.StageFailed, match=r"stage 1 \(commonality\) failed: .*Its last error: error: "
                                            r"/x/1-commonality/checkpoint_1_2\.pt: write failed: No space left"):
        run_all(fake_plan(tiny_data["data"], run), stages="1", log=lines.append)
    assert any("(the summary was not updated: " in line and "stages.json: write failed" in line for line in lines)
