"""The shared shelf for files and processes: every reader, atomic writer, checksum and
logged subprocess of the package goes through this module.

Reading the plain-text files every preprocess tool consumes:

Input contract (one sentence or paragraph per line, UTF-8):
- bytes that are not UTF-8 -> TreLMError naming the file, the 1-based line number and the
  byte offset in the file; a UTF-8 byte-order mark at the start is ignored, CRLF is accepted;
- parallel files must have the same number of lines -> otherwise TreLMError naming both
  files and both counts;
- empty or whitespace-only lines are skipped and counted (for a parallel file, the pair is
  skipped when either side is empty); with `strict=True` they are an error instead;
- over-long lines (more than `max_chars` characters or `max_words` whitespace-separated
  words, either limit optional) are skipped and counted, or an error with `strict=True`;
- kept lines are whitespace-normalised: stripped, inner runs of whitespace (tabs included)
  become one space, so every line is safe to put in a TSV column.

Writers go through `atomic_write` (an open file), `atomic_output` (a temporary path, for
tools that write by name) or `atomic_folder` (a temporary folder, for tools that write a
whole folder): the data lands in a temporary file next to the destination
and is renamed over it only when complete, so a crash or an exception never leaves a
half-written file behind; write failures (disk full, read-only folder) become a TreLMError
naming the file.  `run_logged` is the one way to run a command and keep its output.

Temporaries carry the writing process's id: `.<name>.<pid>.<random>.tmp` (files and
folders; `atomic_output(..., suffix)` appends the suffix a tool needs), so that
`remove_stale_temporaries` can remove those of dead runs (killed, or the machine went
down) and never a live process's.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from trelm_fairseq.errors import TreLMError, write_error
from trelm_fairseq.layout import LOCK_NAME

_BOM = b"\xef\xbb\xbf"


def normalize_space(text: str) -> str:
    """Strip and collapse every run of (Unicode) whitespace to one space."""
    return " ".join(text.split())


def has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


@dataclass
class ReadStats:
    """What a reader kept and skipped; `lines` counts lines (or pairs) read."""
    lines: int = 0
    kept: int = 0
    empty: int = 0
    too_long: int = 0

    def add(self, other: "ReadStats") -> "ReadStats":
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    def summary(self) -> str:
        return (f"{self.kept} kept of {self.lines} (skipped: {self.empty} empty, "
                f"{self.too_long} over-long)")


def open_for_reading(path: str, mode: str = "r", what: str = "file", **kwargs):
    """``open(path, mode)`` for reading; TreLMError naming the file when it is missing, a
    directory or unreadable."""
    try:
        return open(path, mode, **kwargs)
    except IsADirectoryError as e:
        raise TreLMError(f"{path}: is a directory, expected a file ({what})") from e
    except FileNotFoundError as e:
        raise TreLMError(f"{path}: {what} not found") from e
    except OSError as e:
        raise TreLMError(f"{path}: cannot open {what}: {e.strerror or e}") from e


def check_input_file(path: str, what: str = "file") -> str:
    """``path`` when it is an existing file; else TreLMError: not found, or a directory
    where a file is expected."""
    if os.path.isdir(path):
        raise TreLMError(f"{path}: is a directory, expected a file ({what})")
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: {what} not found")
    return path


def iter_raw_lines(path: str) -> Iterator[Tuple[int, str]]:
    """Yield (line number, decoded line without its newline), checking the encoding."""
    with open_for_reading(path, "rb") as f:
        yield from iter_stream_lines(f, path, "the file")


def iter_stream_lines(stream, name: str, what: str = "the input") -> Iterator[Tuple[int, str]]:
    """iter_raw_lines for an open binary stream (e.g. ``sys.stdin.buffer``; ``name`` names it
    in errors): the same contract, UTF-8 with an optional byte-order mark, CRLF accepted."""
    offset = 0
    for lineno, raw in enumerate(stream, start=1):
        start = 0
        if lineno == 1 and raw.startswith(_BOM):
            start = len(_BOM)
        try:
            line = raw[start:].decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[start + e.start: start + e.start + 1]
            raise TreLMError(
                f"{name}:{lineno}: not UTF-8: byte 0x{bad.hex()} at byte offset "
                f"{offset + start + e.start} of {what} (expected UTF-8 text; "
                f"convert it, e.g. with iconv -f <encoding> -t utf-8)"
            ) from None
        offset += len(raw)
        yield lineno, line.rstrip("\r\n")


class _Checker:
    """Applies the empty / over-long policy to one line."""

    def __init__(self, strict, max_chars, max_words):
        self.strict, self.max_chars, self.max_words = strict, max_chars, max_words

    def problem(self, line: str) -> Optional[str]:
        if not line:
            return "empty"
        if self.max_chars is not None and len(line) > self.max_chars:
            return "too_long"
        if self.max_words is not None and len(line.split(" ")) > self.max_words:
            return "too_long"
        return None

    def fail(self, path, lineno, problem, line):
        if problem == "empty":
            what = "empty or whitespace-only line"
        else:
            what = (f"over-long line ({len(line)} chars, {len(line.split(' '))} words; "
                    f"limits: max_chars={self.max_chars}, max_words={self.max_words})")
        raise TreLMError(f"{path}:{lineno}: {what} (strict mode: expected one non-empty "
                         f"sentence per line)")


def read_lines(path: str, *, strict: bool = False, max_chars: Optional[int] = None,
               max_words: Optional[int] = None,
               stats: Optional[ReadStats] = None) -> List[str]:
    """Read a monolingual text file: normalised, non-empty, not over-long lines."""
    check = _Checker(strict, max_chars, max_words)
    stats = stats if stats is not None else ReadStats()
    out = []
    for lineno, raw in iter_raw_lines(path):
        stats.lines += 1
        line = normalize_space(raw)
        problem = check.problem(line)
        if problem is None:
            out.append(line)
            stats.kept += 1
            continue
        if strict:
            check.fail(path, lineno, problem, line)
        setattr(stats, problem, getattr(stats, problem) + 1)
    return out


def read_parallel(src_path: str, tgt_path: str, *, strict: bool = False,
                  max_chars: Optional[int] = None, max_words: Optional[int] = None,
                  stats: Optional[ReadStats] = None) -> List[Tuple[str, str]]:
    """Read two line-aligned files into (source, target) pairs.

    A pair is skipped (and counted once) when either side is empty or over-long."""
    check = _Checker(strict, max_chars, max_words)
    stats = stats if stats is not None else ReadStats()
    pairs = []
    src_it, tgt_it = iter_raw_lines(src_path), iter_raw_lines(tgt_path)
    n = 0
    while True:
        s, t = next(src_it, None), next(tgt_it, None)
        if s is None or t is None:
            if s is None and t is None:
                break
            # One file ended early: count the rest of the other for the message.
            longer_it, longer = (src_it, s) if t is None else (tgt_it, t)
            rest = 1 + sum(1 for _ in longer_it)
            n_src, n_tgt = (n + rest, n) if t is None else (n, n + rest)
            raise TreLMError(
                f"parallel files have different line counts: {src_path} has {n_src} lines, "
                f"{tgt_path} has {n_tgt} lines (expected one translation per line)")
        n += 1
        stats.lines += 1
        (lineno, s_raw), (_, t_raw) = s, t
        s_line, t_line = normalize_space(s_raw), normalize_space(t_raw)
        problems = [(p, path, line) for p, path, line in (
            (check.problem(s_line), src_path, s_line), (check.problem(t_line), tgt_path, t_line))
            if p is not None]
        if not problems:
            pairs.append((s_line, t_line))
            stats.kept += 1
            continue
        problem, path, line = problems[0]
        if strict:
            check.fail(path, lineno, problem, line)
        setattr(stats, problem, getattr(stats, problem) + 1)
    return pairs


# errors of the write itself (an OSError from the caller's code inside the `with`
# block, e.g. reading an input file, passes unchanged)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def write_failure(e: BaseException) -> Optional[OSError]:
    """The OSError of a failed write behind `e`, if any (torch's zip writer re-raises it
    as a RuntimeError whose context is that OSError; safetensors and tokenizers, written in
    Rust, raise their own exception whose text carries the OS error's number)."""
    if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
        e = e.__context__
    if not isinstance(e, OSError):
        found = _RUST_IO_ERROR.search(str(e))
        code = int(found.group(1) or found.group(2)) if found else None
        return OSError(code, os.strerror(code)) if code in _WRITE_ERRNOS else None
    return e if e.errno in _WRITE_ERRNOS else None




def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """The mode a new file gets from open() under this process's umask (0644 under 022)."""
    return 0o666 & ~_umask()


# ----- temporaries: named after their process, removable once it is gone --------------

# .<name>.<pid>.<8 random chars>.tmp[<suffix>...]  (mkstemp / mkdtemp's random part; an
# atomic_folder's previous version is <temp>.old); the trainer-text prefix of older
# trelm-vocab runs (.tmp-<pid>-spm.*) is recognised too
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
_OLD_SPM_RE = re.compile(r"^\.tmp-(?P<pid>\d+)-spm\.")


def temp_prefix(path: str) -> str:
    """The name prefix of this process's temporaries for `path`: `.<name>.<pid>.`"""
    return f".{os.path.basename(os.path.normpath(path))}.{os.getpid()}."


def temporary_owner(name: str) -> Optional[int]:
    """The process id in a temporary's file name (None: not one of our temporaries)."""
    m = _TEMP_RE.match(name) or _OLD_SPM_RE.match(name)
    return int(m.group("pid")) if m else None


def process_alive(pid: int) -> bool:
    """Is there a process `pid` on this machine (one we may not signal counts as alive)?"""
    if pid <= 0:
        return True  # never guess about odd ids
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def _remove_if_stale(path: str, pid: int) -> bool:
    """Remove the temporary ``path`` of process ``pid`` if that process is gone; whether it was."""
    if pid == os.getpid() or process_alive(pid):
        return False
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise write_error(path, e) from e
    return True


def remove_stale_temporaries_of(path: str, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """remove_stale_temporaries for the temporaries of one output ``path`` only (those next to
    it named after it): what a killed writer of ``path`` left, without walking the folder it
    lies in (which may be large, and hold other tools' work)."""
    parent, name = os.path.split(os.path.abspath(path))
    removed: List[str] = []
    if not os.path.isdir(parent):
        return removed
    for entry in os.listdir(parent):
        m = _TEMP_RE.match(entry)
        if not m or m.group("name") != name:
            continue
        stale = os.path.join(parent, entry)
        if _remove_if_stale(stale, int(m.group("pid"))):
            removed.append(stale)
    if removed and log is not None:
        log(f"removed what an earlier run that did not finish left of {path}: {', '.join(removed)}")
    return removed


def remove_stale_temporaries(folder: str, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Remove, anywhere under `folder`, the temporary files and folders left by runs
    whose process is gone (killed, machine restarted): those named
    `.<name>.<pid>.<random>.tmp...` whose pid is not a live process.  A live process's
    temporaries are kept (another run writing here now).  Returns the removed paths.

    The pid is this machine's: on a folder shared between machines a temporary of a
    run on another machine looks stale; do not run two machines on one output folder."""
    removed: List[str] = []
    if not os.path.isdir(folder):
        return removed
    for root, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            pid = temporary_owner(name)
            path = os.path.join(root, name)
            if pid is None or not _remove_if_stale(path, pid):
                continue
            removed.append(path)
            if name in dirs:
                dirs.remove(name)  # do not walk into what is gone
    if removed and log is not None:
        log(f"removed {len(removed)} temporary file(s) / folder(s) of earlier runs that did not finish: "
            + ", ".join(os.path.relpath(p, folder) for p in removed))
    return removed


def die_with_parent() -> None:
    """``preexec_fn`` of a helper process (eflomal): the kernel kills it when the process that
    started it dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def make_dirs(path: str) -> List[str]:
    """`os.makedirs(path, exist_ok=True)`; returns the folders it created (outermost
    first).  A failure (read-only, disk full) is a write error naming `path`, and the
    folders this call created are removed again (nothing half-made)."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    missing.reverse()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        _remove_dirs(missing)
        raise write_error(path, e) from e
    return missing


def _remove_dirs(created: Sequence[str]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only when still empty


def replace(src: str, dst: str) -> None:
    """`os.replace(src, dst)`; a failure is a write error naming `dst`."""
    try:
        os.replace(src, dst)
    except OSError as e:
        raise write_error(dst, e) from e


@contextlib.contextmanager
def temporary_folder(near: str):
    """A temporary folder next to `near` (its name carries this process's id), removed
    when the block ends, however it ends.  Creating it on a read-only / full disk is a
    write error naming `near`."""
    tmp, _ = _new_temp_folder(near)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_temp_folder(near: str):
    """(a new temporary folder next to `near`, named for this process; the parent folders this
    call created).  A failure is a write error naming `near`, and nothing is left made."""
    parent = os.path.dirname(os.path.abspath(near))
    created = make_dirs(parent)
    try:
        return tempfile.mkdtemp(dir=parent, prefix=temp_prefix(near), suffix=".tmp"), created
    except OSError as e:
        _remove_dirs(created)
        raise write_error(near, e) from e


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Open a temporary file next to `path`; rename it to `path` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    created = make_dirs(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as e:  # read-only folder, no permission
        _remove_dirs(created)
        raise write_error(path, e) from e
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _remove_dirs(created)
        cause = write_failure(e)
        if cause is not None:  # disk full, quota, I/O error
            raise write_error(path, cause) from e
        raise


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path next to `path` (ending in `suffix` after `.tmp`, for tools
    that pick the format by extension); rename it to `path` only when the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    created = make_dirs(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(path), suffix=".tmp" + suffix)
        os.close(fd)
    except OSError as e:
        _remove_dirs(created)
        raise write_error(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _remove_dirs(created)
        cause = write_failure(e)
        if cause is not None:
            raise write_error(path, cause) from e
        raise


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yield a temporary folder next to `path` to fill (for tools that write a whole folder);
    when the block succeeds it takes the place of `path` (an old folder there is removed),
    otherwise it is removed and `path` is left as it was."""
    tmp, created = _new_temp_folder(path)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous version back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        cause = write_failure(e)
        if cause is not None:
            raise write_error(path, cause) from e
        raise


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_lines(path: str, lines: Iterable[str]) -> int:
    """Atomically write one line per item; returns the number of lines."""
    n = 0
    with atomic_write(path) as f:
        for line in lines:
            if "\n" in line or "\r" in line:
                raise TreLMError(f"{path}: refusing to write line {n + 1} containing a "
                                 f"newline (expected one sentence per line)")
            f.write(line + "\n")
            n += 1
    return n


def write_tsv(path: str, rows: Iterable[Tuple[str, ...]]) -> int:
    """Atomically write tab-separated rows (fields must not contain tabs or newlines)."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            if any(ch in field for field in row for ch in "\t\n\r"):
                raise TreLMError(f"{path}: row {n + 1} has a field containing a tab or "
                                 f"newline (expected normalised text)")
            f.write("\t".join(row) + "\n")
            n += 1
    return n


def write_json(path: str, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def read_json(path: str, what: str = "JSON file", remedy: str = "delete it or restore it"):
    """A JSON file's content; TreLMError naming the file when it is missing or not JSON."""
    try:
        with open_for_reading(path, encoding="utf-8", what=what) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TreLMError(f"{path}: unreadable {what} (not valid JSON: {e}); {remedy}") from e


def cached_json(path: str, compute: Callable[[], object],
                valid: Optional[Callable[[object], bool]] = None, what: str = "step record",
                remedy: str = "delete it to redo the step"):
    """The one "skip what is finished" rule: a step's JSON record is written (atomically)
    only when the step completes, so its presence means done.  Returns the record at
    `path` when it exists (and `valid(record)` holds), else runs `compute()`, writes its
    result there and returns it."""
    if os.path.isfile(path):
        record = read_json(path, what, remedy)
        if valid is None or valid(record):
            return record
    record = compute()
    write_json(path, record)
    return record


def cached_json_of_file(path: str, source: str, compute: Callable[[], Dict], what: str = "step record",
                        valid: Optional[Callable[[Dict], bool]] = None) -> Dict:
    """cached_json for a record computed from the file ``source`` (e.g. a probe of a
    checkpoint): it counts only for the bytes it was computed on (their sha256 is kept in
    the record as ``source_sha256``), so a re-trained checkpoint is measured again; and,
    given ``valid``, only when that says so (e.g. it was computed with today's options)."""
    sha = file_sha256(source)
    return cached_json(path, lambda: dict(compute(), source_sha256=sha),
                       lambda record: record.get("source_sha256") == sha and (valid is None or valid(record)), what)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open_for_reading(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def command_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of every child process: quiet library warnings, fairseq's
    checkpoints readable by torch >= 2.6, plus `extra`."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")  # hydra / fairseq deprecation noise
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    env.update(extra or {})
    return env


def run_logged(cmd: Sequence[str], log_path: Optional[str] = None,
               on_line: Optional[Callable[[str], None]] = None,
               env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
               keep_output: bool = True) -> Tuple[int, str]:
    """Run `cmd` with stderr merged into stdout, streaming each line to `on_line` and
    appending it (between a command header and an exit footer) to `log_path`;
    returns (exit status, the whole output: "" without `keep_output`, for long runs)."""
    cmd = [str(c) for c in cmd]
    lines: List[str] = []
    logf = None
    if log_path:
        # a log that cannot be made leaves nothing behind (no new folder, no empty log)
        created = make_dirs(os.path.dirname(os.path.abspath(log_path)))
        new_file = not os.path.exists(log_path)
        try:
            # line-buffered: a line the command printed is in the file once read here, so a
            # killed runner loses at most what is still in the pipe
            logf = open(log_path, "a", encoding="utf-8", buffering=1)
            logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            logf.flush()
        except OSError as e:
            if logf is not None:
                with contextlib.suppress(OSError):
                    logf.close()
            if new_file:
                with contextlib.suppress(OSError):
                    os.unlink(log_path)
            _remove_dirs(created)
            raise write_error(log_path, e) from e
    try:
        from .warm_start import popen

        # fairseq-train & co. forked from a process that imported torch and fairseq once
        proc = popen(cmd, env=command_env() if env is None else env, cwd=cwd)
        try:
            for line in proc.stdout:
                if keep_output:
                    lines.append(line)
                if logf:
                    logf.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))
        except BaseException:
            proc.kill()  # the log cannot be kept (disk full) or we were interrupted: stop the command
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if logf:
            logf.write(f"=== exit {rc}\n")
            logf.flush()
    except OSError as e:
        cause = write_failure(e) if logf is not None else None
        if cause is not None:  # the log's disk filled up: say so, naming it
            raise write_error(log_path, cause) from e
        raise
    finally:
        if logf:
            with contextlib.suppress(OSError):
                logf.close()
    return rc, "".join(lines)




class FolderBusy(TreLMError):
    """Another live process holds the folder (exclusive / output_lock): this run wrote nothing."""


def check_output_folder(out: str, inputs: Dict[str, str], force: bool, marker: str, tool: str) -> None:
    """Before a command writes (or with --force replaces) the folder ``out``: TreLMError unless
    that is safe.  ``out`` must not hold or be an input of the call (``inputs``: option -> path)
    nor the working directory, whatever --force says; an existing ``out`` is replaced only with
    ``force`` and only when it holds ``marker``, the file ``tool`` writes into every folder it
    makes (so --force never deletes a folder the tool did not write)."""
    target = os.path.realpath(out)
    for option, path in dict(inputs, **{"the working directory": os.getcwd()}).items():
        if not path:
            continue
        real = os.path.realpath(path)
        if real == target or os.path.commonpath([real, target]) == target:
            raise TreLMError(f"{out}: would replace {option} ({path}) {'' if real == target else 'that lies inside it'}"
                             .rstrip() + f"; {tool} writes a new folder: give --out a folder of its own")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise TreLMError(f"{out}: exists and is not a directory: expected a new output directory")
    if not force:
        raise TreLMError(f"{out}: exists: expected a new output directory (--force replaces an earlier {tool} output)")
    if not os.path.isfile(os.path.join(out, marker)):
        raise TreLMError(f"{out}: exists and has no {marker}, so {tool} did not write it: --force only replaces an "
                         f"earlier {tool} output; remove the folder yourself or choose another --out")


@contextlib.contextmanager
def output_lock(out: str, what: str):
    """Hold the output folder ``out`` (not yet made, or about to be replaced whole) for this
    process: a second writer to the same ``out`` stops at once with a TreLMError naming the
    holder.  The lock is a hidden file next to ``out`` (flock, released by a killed holder),
    removed when the block ends."""
    parent, name = os.path.split(os.path.abspath(out))
    path = os.path.join(parent, f".{name}.trelm.lock")
    while True:
        try:
            make_dirs(parent)
            f = open(path, "a+", encoding="utf-8")
        except OSError as e:
            raise write_error(out, e) from e  # the folder the user asked for, not our lock file
        holder = _lock_or_holder(f)
        if holder is not None:
            f.close()
            raise FolderBusy(f"{out}: being written by {holder}; wait for it to finish (or stop it) before "
                             f"running {what} to the same folder")
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the holder before us removed the file we locked: lock the one there now
    try:
        _name_holder(f, what)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still held; the next writer makes a new one
    finally:
        f.close()


def _lock_or_holder(f) -> Optional[str]:
    """flock ``f`` (an open lock file) for this process: None, or who holds it (what it says)."""
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        f.seek(0)
        return f.read().strip() or "another process"


def _name_holder(f, what: str) -> None:
    f.seek(0)
    f.truncate()
    f.write(f"{what} (pid {os.getpid()})\n")
    f.flush()


@contextlib.contextmanager
def exclusive(folder: str, what: str):
    """Hold `folder` for this process while the block runs: a second run writing the same
    folder (another trelm-prepare on the data directory, another trelm-stages or sweep job
    on the same stage) stops at once with a TreLMError naming the holder, instead of both
    writing the same files.  The lock is the kernel's (flock): a killed holder releases it;
    the (then empty) lock file stays, unless the block wrote nothing: a run that stopped early
    leaves no folder holding only the lock (nor the folders this call made)."""
    lock = os.path.join(folder, LOCK_NAME)
    created = make_dirs(folder)
    try:
        f = open(lock, "a+", encoding="utf-8")
    except OSError as e:
        _remove_dirs(created)
        raise write_error(lock, e) from e
    try:
        holder = _lock_or_holder(f)
        if holder is not None:
            raise FolderBusy(f"{folder}: in use by {holder}; wait for it to finish (or stop it) before running "
                             f"{what} on it again")
        _name_holder(f, what)
        try:
            yield
        finally:
            f.truncate(0)  # names no one once released: the folder's content stays run-independent
            with contextlib.suppress(OSError):
                if os.listdir(folder) == [LOCK_NAME]:  # nothing written: leave no trace
                    os.unlink(lock)  # still held: a writer arriving now is refused, the next makes a new one
                    _remove_dirs(created)
    finally:
        f.close()  # releases the lock
