"""fileio: the reader/validator every preprocess tool uses, and the atomic writers."""
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trelm_fairseq.errors import TreLMError
from trelm_fairseq import fileio
from trelm_fairseq.fileio import ReadStats


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_non_utf8_byte_names_file_line_and_offset(tmp_path):
    data = "bir\niki\n".encode() + b"\xc3\x28 bozuk\n" + b"dort\n"
    path = _write(tmp_path / "bad.tr", data)
    with pytest.raises(TreLMError) as e:
        fileio.read_lines(path)
    msg = str(e.value)
    assert f"{path}:3:" in msg
    assert "byte 0xc3" in msg
    assert "byte offset 8 " in msg        # "bir\n" + "iki\n" = 8 bytes before it
    assert "UTF-8" in msg


def test_non_utf8_in_middle_of_line_offset(tmp_path):
    path = _write(tmp_path / "bad.txt", b"ok\nab\xffc\n")
    with pytest.raises(TreLMError, match=r"bad.txt:2: .*0xff at byte offset 5 "):
        fileio.read_lines(path)


def test_bom_crlf_and_whitespace_normalised(tmp_path):
    path = _write(tmp_path / "a.txt", b"\xef\xbb\xbfIlk  satir\r\n\tiki\t\tuc \r\n")
    assert fileio.read_lines(path) == ["Ilk satir", "iki uc"]


def test_missing_file(tmp_path):
    with pytest.raises(TreLMError, match="nope.txt: file not found"):
        fileio.read_lines(str(tmp_path / "nope.txt"))


def test_directory_where_a_file_is_expected(tmp_path):
    """Every reader (and the up-front check) says "is a directory, expected a file", never
    "not found" or an IsADirectoryError traceback."""
    d = tmp_path / "corpus.en"
    d.mkdir()
    f = _write(tmp_path / "train.tr", b"x\n")
    expected = f"{d}: is a directory, expected a file"
    for call in (lambda: fileio.read_lines(str(d)), lambda: list(fileio.iter_raw_lines(str(d))),
                 lambda: fileio.read_parallel(str(d), f), lambda: fileio.read_parallel(f, str(d)),
                 lambda: fileio.read_json(str(d)), lambda: fileio.file_sha256(str(d)),
                 lambda: fileio.check_input_file(str(d), "parallel file")):
        with pytest.raises(TreLMError) as e:
            call()
        assert str(e.value).startswith(expected), str(e.value)
    with pytest.raises(TreLMError, match="nope: parallel file not found"):
        fileio.check_input_file(str(tmp_path / "nope"), "parallel file")


def test_mismatched_parallel_counts_names_both_files(tmp_path):
    src = _write(tmp_path / "train.en", b"a\nb\nc\n")
    tgt = _write(tmp_path / "train.tr", b"x\ny\n")
    with pytest.raises(TreLMError) as e:
        fileio.read_parallel(src, tgt)
    msg = str(e.value)
    assert f"{src} has 3 lines" in msg and f"{tgt} has 2 lines" in msg
    # and the other way round: the target file is the longer one
    with pytest.raises(TreLMError) as e:
        fileio.read_parallel(tgt, src)
    assert f"{tgt} has 2 lines, {src} has 3 lines" in str(e.value)


def test_empty_lines_skipped_and_counted_mono(tmp_path):
    path = _write(tmp_path / "m.txt", b"one\n\n   \n\t\ntwo\n")
    stats = ReadStats()
    assert fileio.read_lines(path, stats=stats) == ["one", "two"]
    assert (stats.lines, stats.kept, stats.empty, stats.too_long) == (5, 2, 3, 0)


def test_empty_lines_skipped_and_counted_parallel(tmp_path):
    src = _write(tmp_path / "p.en", b"hello\n\nthird\n  \n")
    tgt = _write(tmp_path / "p.tr", b"merhaba\nikinci\n \nbos\n")
    stats = ReadStats()
    pairs = fileio.read_parallel(src, tgt, stats=stats)
    assert pairs == [("hello", "merhaba")]
    assert (stats.lines, stats.kept, stats.empty) == (4, 1, 3)


def test_strict_empty_line_is_error(tmp_path):
    path = _write(tmp_path / "m.txt", b"one\n  \ntwo\n")
    with pytest.raises(TreLMError, match=rf"{path}:2: empty or whitespace-only"):
        fileio.read_lines(path, strict=True)
    src = _write(tmp_path / "p.en", b"a\nb\n")
    tgt = _write(tmp_path / "p.tr", b"x\n\n")
    with pytest.raises(TreLMError, match=rf"{tgt}:2: empty"):
        fileio.read_parallel(src, tgt, strict=True)


def test_over_long_lines_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "m.txt", "kısa\n{}\niki kelime\nbir iki üç dört\n".format(
        "x" * 30).encode())
    stats = ReadStats()
    lines = fileio.read_lines(path, max_chars=20, max_words=3, stats=stats)
    assert lines == ["kısa", "iki kelime"]
    assert (stats.too_long, stats.empty, stats.kept) == (2, 0, 2)
    src = _write(tmp_path / "p.en", b"short\nfine\n")
    tgt = _write(tmp_path / "p.tr", b"one two three four\nok\n")
    stats = ReadStats()
    assert fileio.read_parallel(src, tgt, max_words=3, stats=stats) == [("fine", "ok")]
    assert stats.too_long == 1
    with pytest.raises(TreLMError, match=r"p.tr:1: over-long line \(18 chars, 4 words"):
        fileio.read_parallel(src, tgt, max_words=3, strict=True)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"

    def lines():
        yield "first"
        yield "second"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        fileio.write_lines(str(target), lines())
    assert not target.exists()
    assert os.listdir(tmp_path) == []          # no temporary file left behind either


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    fileio.write_lines(str(target), ["old"])
    with pytest.raises(TreLMError, match="newline"):
        fileio.write_lines(str(target), ["new", "bad\nline"])
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & 0o044, "written files get the usual (umask) permissions, not 0600"


def test_write_tsv_and_json(tmp_path):
    assert fileio.write_tsv(str(tmp_path / "a.tsv"), [("scalc", "Sum"), ("shared", "OK")]) == 2
    assert (tmp_path / "a.tsv").read_text() == "scalc\tSum\nshared\tOK\n"
    with pytest.raises(TreLMError, match="tab"):
        fileio.write_tsv(str(tmp_path / "b.tsv"), [("scalc", "a\tb")])
    assert not (tmp_path / "b.tsv").exists()
    fileio.write_json(str(tmp_path / "c.json"), {"ı": 1})
    assert '"ı": 1' in (tmp_path / "c.json").read_text(encoding="utf-8")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
                max_size=15))
def test_write_read_round_trip(tmp_path_factory, lines):
    """Whatever is written (newlines excluded) reads back normalised, empties skipped."""
    d = tmp_path_factory.mktemp("rt")
    lines = [fileio.normalize_space(line) for line in lines]
    path = str(d / "x.txt")
    fileio.write_lines(path, lines)
    stats = ReadStats()
    assert fileio.read_lines(path, stats=stats) == [line for line in lines if line]
    assert stats.empty == sum(1 for line in lines if not line)


def test_atomic_output_and_folder_replace_only_on_success(tmp_path):
    target = tmp_path / "out.npz"
    with fileio.atomic_output(str(target), suffix=".npz") as tmp:
        assert tmp.endswith(".npz") and not target.exists()
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with fileio.atomic_output(str(target)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("tool crashed")
    assert target.read_bytes() == b"new"

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "old.idx").write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_folder(str(folder)) as tmp:
            open(os.path.join(tmp, "train.bin"), "w").write("half")
            raise RuntimeError("fairseq-preprocess failed")
    assert sorted(p.name for p in folder.iterdir()) == ["old.idx"]
    with fileio.atomic_folder(str(folder)) as tmp:
        open(os.path.join(tmp, "train.bin"), "w").write("new")
    assert sorted(p.name for p in folder.iterdir()) == ["train.bin"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "out.npz"]  # no temporary left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_run_logged_streams_logs_and_returns_the_output(tmp_path):
    log = tmp_path / "logs" / "cmd.log"
    seen = []
    rc, out = fileio.run_logged(["sh", "-c", "echo one; echo two >&2; printf '\\377\\n'; exit 3"],
                                str(log), seen.append)
    assert rc == 3 and out.splitlines()[:2] == ["one", "two"] and seen[:2] == ["one", "two"]
    text = log.read_text(encoding="utf-8")
    assert text.startswith("=== ") and "one\ntwo\n" in text and text.endswith("=== exit 3\n")
    rc, out = fileio.run_logged(["sh", "-c", "echo quiet"], keep_output=False)
    assert (rc, out) == (0, "")


def test_read_and_cached_json_name_a_damaged_record(tmp_path):
    path = tmp_path / "step.json"
    calls = []
    assert fileio.cached_json(str(path), lambda: calls.append(1) or {"n": 1}) == {"n": 1}
    assert fileio.cached_json(str(path), lambda: calls.append(1) or {"n": 2}) == {"n": 1} and calls == [1]
    assert fileio.cached_json(str(path), lambda: {"n": 3}, valid=lambda r: r["n"] == 3) == {"n": 3}
    path.write_text("{half")
    with pytest.raises(TreLMError, match=r"step\.json: unreadable stage marker \(not valid JSON.*delete it to redo"):
        fileio.cached_json(str(path), dict, what="stage marker", remedy="delete it to redo the stage")
    with pytest.raises(TreLMError, match="nope.json: run record not found"):
        fileio.read_json(str(tmp_path / "nope.json"), "run record")


# ----- temporaries of dead runs ----------------------------------------------------------

def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no such process any more


def test_temporaries_carry_the_pid_and_only_dead_runs_ones_are_removed(tmp_path):
    import subprocess

    with fileio.atomic_write(str(tmp_path / "dict.txt")) as f:
        (name,) = [p for p in os.listdir(tmp_path) if p != "dict.txt"]
        assert name.startswith(f".dict.txt.{os.getpid()}.") and name.endswith(".tmp")
        assert fileio.temporary_owner(name) == os.getpid()
        f.write("x\n")
    with fileio.atomic_output(str(tmp_path / "m.npz"), suffix=".npz") as tmp:
        assert fileio.temporary_owner(os.path.basename(tmp)) == os.getpid() and tmp.endswith(".tmp.npz")
        open(tmp, "w").close()
    with fileio.temporary_folder(str(tmp_path / "work" / "align")) as tmp:
        assert os.path.basename(tmp).startswith(f".align.{os.getpid()}.")
    assert not os.path.exists(tmp)

    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "30"])  # a live run of another process
    try:
        sub = tmp_path / "para"
        sub.mkdir()
        stale = [tmp_path / f".dict.txt.{dead}.ab12cd34.tmp", sub / f".en.{dead}.x_9ab0cd.tmp",
                 tmp_path / f".model.pt.{dead}.abcdefgh.tmp.pt", tmp_path / f".tmp-{dead}-spm.train.txt",
                 sub / f".en.{dead}.x_9ab0cd.tmp.old"]
        live = [tmp_path / f".spm.txt.{os.getpid()}.ab12cd34.tmp", sub / f".gather.{sleeper.pid}.qwertyui.tmp"]
        others = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "checkpoint_1_4.pt.tmp",
                  tmp_path / f".x.{dead}.short.tmp"]
        for p in stale[:1] + stale[2:4] + live[:1] + others:
            p.write_text("half")
        for p in (stale[1], stale[4], live[1]):
            p.mkdir()
            (p / "train.bin").write_text("half")
        removed = fileio.remove_stale_temporaries(str(tmp_path))
        assert sorted(removed) == sorted(map(str, stale))
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in live + others)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """A real kill: a process killed while writing (fileio's temporary file, and a temporary
    folder) leaves them; the next trelm-fetch-corpus run on that folder removes them."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "corpus"
    code = (f"import os, signal\nfrom trelm_fairseq import fileio\n"
            f"with fileio.temporary_folder({str(out / 'work')!r}) as d:\n"
            f"    open(os.path.join(d, 'big'), 'w').write('x' * 1000)\n"
            f"    with fileio.atomic_write({str(out / 'train.en')!r}) as f:\n"
            f"        f.write('half a line'); f.flush()\n"
            f"        os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert proc.wait() == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(fileio.temporary_owner(n) == proc.pid for n in left), left

    from trelm_fairseq.cli import fetch_corpus

    src, tgt = tmp_path / "a.en", tmp_path / "a.tr"
    src.write_text("".join(f"Sentence number {i} here\n" for i in range(40)), encoding="utf-8")
    tgt.write_text("".join(f"Cümle numarası {i} burada\n" for i in range(40)), encoding="utf-8")
    assert fetch_corpus.cli_main(["--lang", "tr", "--out", str(out), "--parallel", str(src), str(tgt)]) == 0
    assert (out / "corpus.json").exists()
    assert not [p for p in out.iterdir() if fileio.temporary_owner(p.name) is not None]


def test_failed_writes_leave_no_half_made_folder_or_log(tmp_path, monkeypatch):
    """A write that fails at once (read-only, disk full) removes the folders it created and an
    empty log it opened."""
    import errno

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))

    with monkeypatch.context() as m:
        m.setattr(fileio.tempfile, "mkstemp", refuse)
        with pytest.raises(TreLMError, match="a/b/c.txt: write failed: Read-only file system"):
            fileio.write_text(str(tmp_path / "a" / "b" / "c.txt"), "x")
    assert not (tmp_path / "a").exists()

    log = tmp_path / "logs" / "run.log"
    real_open = open

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path) == str(log):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    with monkeypatch.context() as m:
        m.setattr("builtins.open", full_open)
        with pytest.raises(TreLMError, match="run.log: write failed: No space left on device"):
            fileio.run_logged(["true"], str(log))
    assert not (tmp_path / "logs").exists()
