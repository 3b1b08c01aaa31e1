"""Messages that must be true where they are printed (issue 16): a repeated dict.txt symbol
named with its file and both lines by every entry point that reads a dictionary; a damaged
checkpoint_last.pt of a finished stage with the remedy that works for trelm-stages."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _cli import BIN, USER_DIR, cli_env  # noqa: E402
from _mapping_helpers import make_data_dir, make_source_model, torch_threads  # noqa: E402
from _stages_helpers import trainer_command as fake_trainer_command  # noqa: E402
from _transfer_helpers import make_tiny_data_dir  # noqa: E402

import trelm_fairseq  # noqa: E402,F401  (registers)
from trelm_fairseq.checkpoint import load_dictionary, unreadable_message  # noqa: E402
from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.stages import StagePlan, run_all  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("msg") / "data"), n_train=40, n_valid=8, n_test=4)


def with_repeated_symbol(dict_path: Path):
    """Append the dictionary's first symbol again; returns (symbol, its line, the new line)."""
    lines = dict_path.read_text(encoding="utf-8").splitlines()
    symbol = lines[0].rsplit(" ", 1)[0]
    dict_path.write_text("\n".join(lines + [f"{symbol} 1"]) + "\n", encoding="utf-8")
    return symbol, 1, len(lines) + 1


def repeated(path, symbol, a, b):
    return f"{path}: symbol '{symbol}' on lines {a} and {b}: every symbol must appear once in a dict.txt"


@pytest.fixture
def dup_data(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    return data, with_repeated_symbol(data / "dict.txt")


# ----- item 3: a repeated symbol in dict.txt --------------------------------------------

def test_load_dictionary_names_the_file_and_both_lines(tmp_path):
    d = tmp_path / "dict.txt"
    d.write_text("a 5\nb 4\nc 3\nb 2\n", encoding="utf-8")
    with pytest.raises(TreLMError, match=repeated(d, "b", 2, 4)):
        load_dictionary(str(d))
    d.write_text("a 5\nb 4\nb 2 #fairseq:overwrite\n", encoding="utf-8")  # fairseq's explicit override
    assert "b" in load_dictionary(str(d)).indices


def test_fairseq_train_transfer_task_repeated_symbol(dup_data, tiny, tmp_path):
    data, (symbol, a, b) = dup_data
    cmd = [str(BIN / "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task", "trelm_transfer",
           "--langs", "en,tr", "--stage", "commonality", "--arch", "trelm_tiny", "--criterion", "trelm_loss",
           "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "256", "--tokens-per-sample", "32",
           "--save-dir", str(tmp_path / "ck"), "--max-update", "1", "--num-workers", "0", "--cpu"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
                          timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert f"error: {repeated(data / 'dict.txt', symbol, a, b)}" in proc.stdout
    assert "Duplicate word found" not in proc.stdout


def test_trelm_stages_repeated_symbol(dup_data, tmp_path, fake, capsys):
    from trelm_fairseq.cli import stages as cli

    data, (symbol, a, b) = dup_data
    with pytest.raises(SystemExit) as e:
        cli.cli_main([str(data), str(tmp_path / "out"), "--langs", "en,tr", "--updates", "1", "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert repeated(data / "dict.txt", symbol, a, b) in err
    assert not fake.exists()  # no fairseq-train started


def test_trelm_parse_prepare_repeated_symbol(tmp_path, capsys):
    from trelm_fairseq.cli import parse_prepare

    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "spm.model").write_bytes(b"not read: the dictionary is checked first")
    (vocab / "dict.txt").write_text("x 3\ny 2\nx 1\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        parse_prepare.cli_main(["--out", str(tmp_path / "out"), "--vocab-dir", str(vocab)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"error: {repeated(vocab / 'dict.txt', 'x', 1, 3)}" in err
    assert not (tmp_path / "out").exists()


def test_trelm_map_embeddings_checks_the_source_dictionary_first(tmp_path, capsys):
    from trelm_fairseq.cli import map_embeddings

    with torch_threads(1):
        src = make_source_model(str(tmp_path / "src"))
    data = make_data_dir(str(tmp_path / "data"))
    symbol, a, b = with_repeated_symbol(Path(src) / "dict.txt")
    with pytest.raises(SystemExit) as e:
        map_embeddings.cli_main(["--source-model", src, "--data", data, "--text", str(tmp_path / "missing.tok"),
                                 "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    # the source dictionary is checked before the text is read (and fastText trained)
    assert f"error: {repeated(Path(src) / 'dict.txt', symbol, a, b)}" in err
    assert not os.path.exists(os.path.join(data, "init", "model.pt"))


# ----- item 9: a damaged checkpoint_last.pt of a finished stage ---------------------------

def test_damaged_output_of_a_finished_stage_says_what_works(tiny, tmp_path, fake):
    def plan():
        return StagePlan(str(tiny["data"]), str(tmp_path / "out"), langs="en,tr", updates={"1": 2, "2": 2, "4": 2},
                         trainer=fake_trainer_command())

    lines = []
    run_all(plan(), stages="1", log=lines.append)
    s1 = tmp_path / "out" / "1-commonality"
    last, marker = s1 / "checkpoint_last.pt", s1 / "stage_done.json"
    assert marker.is_file() and (s1 / "checkpoint_best.pt").is_file()
    last.write_bytes(b"")  # zero bytes: the copy to checkpoint_last.pt was cut short
    with pytest.raises(TreLMError) as e:
        run_all(plan(), stages="2a", log=lines.append)
    msg = str(e.value)
    assert f"{last}: not a readable checkpoint" in msg
    assert "trelm-stages does this itself" not in msg
    assert (f"It is the output of a finished trelm-stages stage and the newest intact checkpoint next to it is "
            f"{s1 / 'checkpoint_best.pt'} (2 updates): delete {marker} and run trelm-stages again") in msg
    # following the advice works: stage 1 recovers its checkpoint_last.pt, then 2a runs
    marker.unlink()
    lines.clear()
    run_all(plan(), stages="1,2a", log=lines.append)
    text = "\n".join(lines)
    assert "was unreadable" in text and (tmp_path / "out" / "2a-transfer_upper" / "stage_done.json").is_file()


def test_unreadable_message_in_each_context(tmp_path):
    err = RuntimeError("PytorchStreamReader failed reading zip archive")
    run = tmp_path / "run"
    run.mkdir()
    last = run / "checkpoint_last.pt"
    last.write_bytes(b"")
    # plain fairseq-train resuming its own checkpoint_last.pt, nothing intact next to it
    assert unreadable_message(str(last), err, resuming=True).endswith(
        f"No intact checkpoint is next to it: delete {last} to start the run over")
    other = run / "model.pt"
    assert unreadable_message(str(other), err).endswith(": delete it and re-create it (or restore a copy)")
    (run / "stage_done.json").write_text("{}")  # a finished stage without an intact checkpoint
    msg = unreadable_message(str(last), err)
    assert msg.endswith(f"no intact checkpoint is next to it: delete {run} and run trelm-stages again to redo "
                        "the stage")


def test_a_missing_or_unprepared_data_directory_is_named_as_such(tmp_path):
    """The language pair is read from DATA/prepare.json: a data directory that does not exist,
    or holds no prepare.json, is reported as that (not as a record without 'langs')."""
    from trelm_fairseq.errors import TreLMError
    from trelm_fairseq.language_pair import langs_from_prepare

    with pytest.raises(TreLMError, match=f"{tmp_path / 'nope'}: no such data directory"):
        langs_from_prepare(str(tmp_path / "nope"))
    with pytest.raises(TreLMError, match="prepare.json: not found, so .* was not prepared by trelm-prepare .* or pass "
                                         "--langs S,T"):
        langs_from_prepare(str(tmp_path))
    (tmp_path / "prepare.json").write_text("{}")
    with pytest.raises(TreLMError, match="records no 'langs'"):
        langs_from_prepare(str(tmp_path))
