"""One exception type for every user-facing error, and the CLI wrappers that print it."""
import errno
import functools
import os
import sys


class TreLMError(Exception):
    """Bad input or state the user can fix: the message names the file / line /
    field and what was expected.  CLIs print it without a traceback and exit 2."""


# errno values that only a write can give (read-only file system, disk full, quota,
# file too large); a permission error can be a read's or a write's
_WRITE_ONLY_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}


def file_system_error(e: BaseException):
    """A TreLMError naming the file for an OSError of the file system that escaped the
    writers (read-only folder, disk full, no permission), else None."""
    if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
        e = e.__context__  # torch's zip writer wraps the OSError
    if not isinstance(e, OSError) or e.errno not in _WRITE_ONLY_ERRNOS | _PERMISSION_ERRNOS:
        return None
    path = e.filename if e.filename is not None else "(a file)"
    if e.errno in _WRITE_ONLY_ERRNOS:
        return write_error(path, e)
    return TreLMError(f"{path}: {e.strerror or e} (errno {e.errno}): fix the permissions of the file or its "
                      "folder (or choose another output folder) and run again")


def cli_errors(main):
    """Decorator for console-script entry points: TreLMError -> message + exit 2; Ctrl-C
    (SIGINT) -> one line + exit 130, the shell's code for it.  A write
    the package did not route through fileio's writers (or a tool writing by name) that
    fails on a read-only / full file system is reported the same way: one `error:` line
    naming the file, exit 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except TreLMError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            if os.environ.get("TRELM_TRACEBACK"):
                raise
            # the atomic writers removed their temporaries on the way out
            print(f"\n{os.path.basename(sys.argv[0] or 'trelm')}: interrupted; nothing half-written is left, what "
                  "finished is kept: run the same command again to go on", file=sys.stderr)
            sys.exit(130)
        except (OSError, RuntimeError) as e:
            err = file_system_error(e)
            if err is None or os.environ.get("TRELM_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def write_error(path: str, e: OSError) -> TreLMError:
    """A failed write (disk full, read-only folder, ...) as a TreLMError naming the file."""
    reason = e.strerror or str(e)
    return TreLMError(
        f"{path}: write failed: {reason} (errno {e.errno}); nothing was written there "
        "(an existing file is unchanged): free space / fix permissions and run again"
    )


# ----- fairseq's own command-line tools ------------------------------------------
# fairseq-train and friends are not our entry points, so cli_errors cannot wrap them.
# When one of them runs with --user-dir trelm_fairseq, a TreLMError (raised by our
# task / model / checkpoint checks, possibly wrapped by fairseq in a generic
# Exception) is printed as "error: ..." instead of a traceback; the exit status stays
# non-zero (1, Python's).  TRELM_TRACEBACK=1 shows the full traceback as well.


def running_fairseq_cli(argv0: str = None) -> bool:
    """True when this process is a fairseq command-line tool (fairseq-train,
    python -m fairseq_cli.train, ...)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if not argv0:
        return False
    norm = argv0.replace("\\", "/")
    return os.path.basename(norm).startswith("fairseq-") or "/fairseq_cli/" in norm


def find_trelm_error(exc):
    """The first TreLMError in ``exc``'s cause / context chain (or None)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TreLMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# translators of exceptions raised inside fairseq's CLIs that are not ours but have a clear
# message we can give (exc -> TreLMError or None); divergence.py registers fairseq's
# non-finite-gradient stop
TRANSLATORS = []


def _translated(exc):
    for translate in TRANSLATORS:
        err = translate(exc)
        if err is not None:
            return err
    return None


def _excepthook(previous):
    def hook(exc_type, exc, tb):
        err = find_trelm_error(exc) or _translated(exc)
        if err is None or os.environ.get("TRELM_TRACEBACK"):
            return previous(exc_type, exc, tb)
        if err is not exc:  # fairseq wrapped it: its message says where (e.g. which checkpoint)
            print(f"error: {exc}", file=sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        print("(set TRELM_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.stderr.flush()

    hook.trelm = True
    return hook


def install_fairseq_excepthook() -> None:
    """Clear messages inside fairseq's CLIs: the excepthook above (the package's __init__
    also makes fairseq's checkpoint reader name the file: checkpoint.py)."""
    if not getattr(sys.excepthook, "trelm", False):
        sys.excepthook = _excepthook(sys.excepthook)
