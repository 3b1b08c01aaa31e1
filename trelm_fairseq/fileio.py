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
"""
import contextlib
import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from trelm_fairseq.errors import TreLMError, write_error

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


def iter_raw_lines(path: str) -> Iterator[Tuple[int, str]]:
    """Yield (line number, decoded line without its newline), checking the encoding."""
    offset = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TreLMError(f"{path}: cannot open: {e.strerror}") from e
    with f:
        for lineno, raw in enumerate(f, start=1):
            start = 0
            if lineno == 1 and raw.startswith(_BOM):
                start = len(_BOM)
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[start + e.start: start + e.start + 1]
                raise TreLMError(
                    f"{path}:{lineno}: not UTF-8: byte 0x{bad.hex()} at byte offset "
                    f"{offset + start + e.start} of the file (expected UTF-8 text; "
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


def _write_failure(e: BaseException) -> Optional[OSError]:
    """The OSError of a failed write behind `e`, if any (torch's zip writer re-raises it
    as a RuntimeError whose context is that OSError)."""
    if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
        e = e.__context__
    return e if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Open a temporary file next to `path`; rename it to `path` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:  # read-only folder, no permission
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
        cause = _write_failure(e)
        if cause is not None:  # disk full, quota, I/O error
            raise write_error(path, cause) from e
        raise


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path next to `path` (ending in `suffix`, for tools that pick
    the format by extension); rename it to `path` only when the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix or ".tmp")
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _write_failure(e)
        if cause is not None:
            raise write_error(path, cause) from e
        raise


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yield a temporary folder next to `path` to fill (for tools that write a whole folder);
    when the block succeeds it takes the place of `path` (an old folder there is removed),
    otherwise it is removed and `path` is left as it was."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = _write_failure(e)
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
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise TreLMError(f"{path}: {what} not found") from e
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


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
            logf = open(log_path, "a", encoding="utf-8")
        except OSError as e:
            raise write_error(log_path, e) from e
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        logf.flush()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, env=command_env() if env is None else env, cwd=cwd)
        try:
            for line in proc.stdout:
                if keep_output:
                    lines.append(line)
                if logf:
                    logf.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if logf:
            logf.write(f"=== exit {rc}\n")
    finally:
        if logf:
            logf.close()
    return rc, "".join(lines)
