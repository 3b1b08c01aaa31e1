"""Every console script on a read-only output folder: exit 2, exactly one `error:` line that
names the path and says the write failed, no traceback, nothing created (docs/reliability.md).

The read-only file system is simulated by fault injection, because the tests run as root (root
ignores `chmod 0o555`): while a script runs, every call that would create, change or remove
something under the read-only folder fails with EROFS, exactly as on a read-only mount --
`builtins.open` / `io.open` with a writing mode, `os.open` with writing flags, `os.mkdir`
(so `os.makedirs`, `tempfile.mkdtemp`, `Path.mkdir`), `os.replace` / `os.rename` / `os.link` /
`os.symlink`, `os.unlink` / `os.remove` / `os.rmdir`, `os.chmod`, `os.utime`, `os.truncate`.
So direct writes (a bare `open(path, "w")`, `shutil.copy`, numpy / fairseq writing by name) are
caught as well as those of fileio's writers.  Writes from C/C++ code (torch's zip writer,
sentencepiece, eflomal) bypass Python: the snapshot of the folder taken before and after the
run checks that nothing appeared there either way.  The folder is also chmod 0o555, which is
what makes it read-only when the tests run as a normal user.
"""
import builtins
import errno
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import lexicon, make_tiny_source_model, write_synthetic_corpus  # noqa: E402
from _stages_helpers import HERE as FAKE_TRAINER  # noqa: E402
from _transfer_helpers import make_family  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# console scripts that write no file (their output is printed)
WRITES_NOTHING = {"trelm-fill-mask"}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def console_scripts():
    """name -> "module:function" of every console script setup.py declares."""
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    return dict(re.findall(r'"(trelm-[a-z-]+)=([\w.]+:\w+)"', text))


class ReadOnlyFolder:
    """Makes every write under ``root`` fail with EROFS while active (see the module doc)."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self.blocked = []  # the paths a write was refused for

    def _under(self, path, dir_fd=None) -> bool:
        if isinstance(path, int):
            return False
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        full = os.path.realpath(os.path.abspath(path))
        return full == self.root or full.startswith(self.root + os.sep)

    def _refuse(self, path, dir_fd=None):
        if self._under(path, dir_fd):
            self.blocked.append(os.fsdecode(path))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def install(self, m):
        real_open, real_os_open = builtins.open, os.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                self._refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, dir_fd=None, **kwargs):
            if flags & _WRITE_FLAGS:
                self._refuse(path, dir_fd)
            return real_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

        m.setattr(builtins, "open", open_)
        m.setattr(io, "open", open_)
        m.setattr(os, "open", os_open)

        def one_path(name):
            real = getattr(os, name)

            def f(path, *args, dir_fd=None, **kwargs):
                self._refuse(path, dir_fd)
                return real(path, *args, **({"dir_fd": dir_fd} if dir_fd is not None else {}), **kwargs)

            m.setattr(os, name, f)

        for name in ("mkdir", "unlink", "remove", "rmdir", "chmod", "utime", "truncate"):
            one_path(name)

        def two_paths(name):
            real = getattr(os, name)

            def f(src, dst, *args, **kwargs):
                self._refuse(src, kwargs.get("src_dir_fd"))
                self._refuse(dst, kwargs.get("dst_dir_fd"))
                return real(src, dst, *args, **kwargs)

            m.setattr(os, name, f)

        for name in ("replace", "rename", "link", "symlink"):
            two_paths(name)


def snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


# ----- inputs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A real (tiny) trelm-prepare data directory and the inputs of every script; ``ro`` is
    the read-only folder, holding a copy of the data directory for the scripts that write
    into the data directory they read (trelm-align, trelm-map-embeddings)."""
    from trelm_fairseq.cli import prepare as prepare_cli

    root = tmp_path_factory.mktemp("readonly")
    corpus = write_synthetic_corpus(root / "corpus", n_train=120, n_valid=10, n_test=10, n_mono=30)
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70]
    source = make_tiny_source_model(root / "source", words)
    data = root / "data"
    from trelm_fairseq.preprocess.prepare import run_prepare

    run_prepare(prepare_cli.build_parser().parse_args([
        "--tgt", "tr", "--out", str(data), "--corpus-dir", str(corpus), "--source-model", str(source),
        "--vocab-size", "100", "--threads", "1", "--mapping", "none"]))

    fam = make_family(root)  # a stage-1 checkpoint and 2a / 2b checkpoints descending from it, for trelm-combine

    # user files: a parallel pair and a monolingual file
    par_en, par_tr = root / "u.en", root / "u.tr"
    shutil.copy(corpus / "train.en", par_en)
    shutil.copy(corpus / "train.tr", par_tr)

    # CoNLL-U for trelm-parse-prepare (words from the vocabulary's text)
    sent = "".join(f"{i}\t{w}\t_\tNOUN\t_\t_\t{0 if i == 1 else 1}\t{'root' if i == 1 else 'obj'}\t_\t_\n"
                   for i, w in enumerate(("kalo", "mine", "ruka"), start=1))
    conllu = {}
    for split in ("train", "valid", "test"):
        conllu[split] = root / f"{split}.conllu"
        conllu[split].write_text(("# text = kalo mine ruka\n" + sent + "\n") * 3, encoding="utf-8")

    ro = root / "ro"
    ro.mkdir()
    shutil.copytree(data, ro / "data")
    return dict(root=root, corpus=corpus, source=source, data=data, fam=fam, par=(par_en, par_tr),
                conllu=conllu, ro=ro, text=root / "u.en")


def _sweep_config(env):
    cfg = {"out": str(env["ro"] / "sweep"),
           "base": {"updates": {"1": 2, "2": 2, "4": 2}, "trainer": [sys.executable, FAKE_TRAINER],
                    "extra_args": ["--cpu"]},
           "languages": {"tr": {"data": str(env["data"]), "langs": "en,tr"}},
           "grid": {"lr": [1e-3]}}
    path = env["root"] / "sweep.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return str(path)


def _parser_checkpoint(env):
    """A trelm_parser checkpoint (untrained) on a trelm-parse-prepare output, for trelm-parse-eval."""
    import torch
    from omegaconf import OmegaConf

    from trelm_fairseq.cli import parse_prepare
    from trelm_fairseq.tasks.trelm_parsing import TreLMParsingConfig, TreLMParsingTask

    parse = env["root"] / "parse"
    if not (parse / "prepare.json").exists():
        c = env["conllu"]
        parse_prepare.cli_main(["--out", str(parse), "--vocab-dir", str(env["data"]), "--train", str(c["train"]),
                                "--valid", str(c["valid"]), "--test", str(c["test"]), "--max-positions", "64"])
    ckpt = env["root"] / "parser.pt"
    if not ckpt.exists():
        import argparse

        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from trelm_fairseq.models.trelm_parser import trelm_parser_tiny

        args = argparse.Namespace(task="trelm_parsing", arch="trelm_parser_tiny", data=str(parse), seed=1,
                                  max_positions=64, dropout=0.0, attention_dropout=0.0, parser_dropout=0.0,
                                  criterion="trelm_parsing", optimizer="adam", lr_scheduler="fixed", lr=[1e-3])
        trelm_parser_tiny(args)
        from fairseq import options

        parser = options.get_training_parser()
        full = options.parse_args_and_arch(parser, [str(parse), "--user-dir", str(REPO / "trelm_fairseq"),
                                                    "--task", "trelm_parsing", "--arch", "trelm_parser_tiny",
                                                    "--criterion", "trelm_parsing", "--max-positions", "64",
                                                    "--cpu"])
        cfg = convert_namespace_to_omegaconf(full)
        task = TreLMParsingTask.setup_task(TreLMParsingConfig(data=str(parse), seed=1, max_positions=64))
        model = task.build_model(cfg.model)
        torch.save({"cfg": OmegaConf.to_container(cfg), "model": model.state_dict(), "args": None,
                    "optimizer_history": [{"criterion_name": "TreLMParsingCriterion", "optimizer_name": "FairseqAdam",
                                          "lr_scheduler_state": {}, "num_updates": 0}],
                    "extra_state": {}}, ckpt)
    return parse, ckpt


def cases(env):
    """script -> (argv, the path the error must name (under ro))."""
    ro, data, src = env["ro"], env["data"], env["source"]
    par = [str(p) for p in env["par"]]
    fam = env["fam"]
    return {
        "trelm-import": (["--out", str(ro / "imp")], ro / "imp"),
        "trelm-import --encode-out": (["--encode", str(env["text"]), "--encode-out", str(ro / "x.tok")],
                                      ro / "x.tok"),
        "trelm-combine": (["--upper", str(fam["transfer_upper"]), "--lower", str(fam["transfer_lower"]),
                           "--parent", str(fam["parent"]), "-o", str(ro / "c.pt")], ro / "c.pt"),
        "trelm-stages": ([str(data), str(ro / "run"), "--langs", "en,tr", "--updates", "2", "--", "--cpu"],
                         ro / "run"),
        "trelm-parse-prepare": (["--out", str(ro / "parse"), "--vocab-dir", str(data)]
                                + [x for s in ("train", "valid", "test") for x in (f"--{s}", str(env["conllu"][s]))]
                                + ["--max-positions", "64"], ro / "parse"),
        "trelm-parse-eval": (None, ro / "pe"),  # filled in by the test (needs a parser checkpoint)
        "trelm-demo": (["--lang", "tr", "--work", str(ro / "w"), "--results", str(ro / "r")], ro),
        "trelm-sweep": (None, ro / "sweep"),
        "trelm-fetch-corpus": (["--lang", "tr", "--out", str(ro / "corpus"), "--parallel", *par], ro / "corpus"),
        "trelm-vocab": (["--corpus-dir", str(env["corpus"]), "--tgt", "tr", "--out", str(ro / "v"),
                         "--source-model", str(src), "--vocab-size", "100", "--threads", "1", "--no-binarize"],
                        ro / "v"),
        "trelm-align": (["--data", str(ro / "data"), "--tgt", "tr", "--threads", "1"], ro / "data"),
        "trelm-map-embeddings": (["--source-model", str(src), "--data", str(ro / "data"), "--no-mapping"],
                                 ro / "data"),
        "trelm-prepare": (["--tgt", "tr", "--out", str(ro / "prep"), "--parallel", *par, "--source-model", str(src),
                           "--vocab-size", "100", "--threads", "1", "--mapping", "none"], ro / "prep"),
        "trelm-probe": ([str(data / "init" / "model.pt"), "--data", str(data), "--json", str(ro / "p.json"),
                         "--max-pairs", "4", "--no-target-mlm"], ro / "p.json"),
        "trelm-export": ([str(data / "init" / "model.pt"), "--data", str(data), "--out", str(ro / "hf"),
                          "--no-check"], ro / "hf"),
    }


def test_every_console_script_has_a_case(env):
    scripts = set(console_scripts())
    covered = {name.split(" ")[0] for name in cases(env)}
    assert scripts - WRITES_NOTHING <= covered, f"no read-only case for {sorted(scripts - WRITES_NOTHING - covered)}"


@pytest.mark.parametrize("case", [
    "trelm-import", "trelm-import --encode-out", "trelm-combine", "trelm-stages", "trelm-parse-prepare",
    "trelm-parse-eval", "trelm-demo", "trelm-sweep", "trelm-fetch-corpus", "trelm-vocab", "trelm-align",
    "trelm-map-embeddings", "trelm-prepare", "trelm-probe", "trelm-export",
])
def test_read_only_output_is_one_clear_error(env, case, monkeypatch, capsys):
    import importlib

    script = case.split(" ")[0]
    entry = console_scripts().get(script)
    if entry is None:
        pytest.skip(f"{script} is not a console script of setup.py (yet)")
    argv, named = cases(env)[case]
    ro = env["ro"]
    if script == "trelm-parse-eval":
        parse, ckpt = _parser_checkpoint(env)
        argv = ["--checkpoint", str(ckpt), "--data", str(parse), "--split", "test", "--output-prefix",
                str(ro / "pe" / "pred"), "--cpu", "--quiet"]
    if script == "trelm-sweep":
        argv = [_sweep_config(env), "--executor", "local"]
    module, func = entry.split(":")
    main = getattr(importlib.import_module(module), func)
    capsys.readouterr()
    before = snapshot(ro)
    fault = ReadOnlyFolder(ro)
    os.chmod(ro, 0o555)
    try:
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", [script, *argv])  # the entry points that read sys.argv
            fault.install(m)
            with pytest.raises(SystemExit) as e:
                main(argv) if func == "cli_main" and script != "trelm-import" else main()
    finally:
        os.chmod(ro, 0o755)
    out, err = capsys.readouterr()
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert e.value.code == 2, (out + err)[-3000:]
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert len(errors) == 1, errors
    assert "write failed" in errors[0] and str(named) in errors[0], errors[0]
    assert fault.blocked, "no write was attempted under the read-only folder"
    assert snapshot(ro) == before  # nothing created, changed or removed there
