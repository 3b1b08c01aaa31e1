"""Start the package's Python command-line tools without paying their imports each time.

Every ``fairseq-train`` / ``fairseq-validate`` / ``trelm-*`` run that the job, the stage runner
and the sweeps start is a new interpreter that imports torch and fairseq first: about 4.5
CPU-seconds each on the 2-core machine, more than a toy stage's training.  ``popen`` starts
such a command from a *warm* server instead: one process per parent (started on first use)
that imports torch, fairseq and fairseq's train/validate entry points once, then forks a
child per command (the plugin registers in each child, as in a new interpreter).  The child
is still a separate process (its own pid, exit status, signals, memory; a crash or a SIGKILL
takes only it): it takes the command's argv, environment, working directory and umask,
points its stdout/stderr at a pipe the caller reads, runs the console script's entry point
and exits with its status.  Its stdin is /dev/null.

What cannot be carried into a forked child is decided at interpreter start (the
``PYTHON*`` variables, the OpenMP / BLAS thread counts read when torch loads them); a
command whose environment differs from the server's there gets a server of its own, and
``TRELM_WARM_START=0`` turns the whole mechanism off (plain subprocesses), e.g. to compare.
Commands other than the package's and fairseq's console scripts (and ``python -m`` of their
modules) are always plain subprocesses.

Protocol (a UNIX socket pair per command, the pipe's write end passed with SCM_RIGHTS):
the server forks a monitor per request, the monitor forks the worker, sends its pid,
waits for it and sends its wait status; the caller's ``WarmProcess`` mirrors
``subprocess.Popen``'s ``stdout`` / ``wait`` / ``kill`` / ``send_signal`` / ``returncode``.
"""
import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

ENV_SWITCH = "TRELM_WARM_START"
# fairseq_cli.train first: it configures logging before anything imports fairseq, as in a
# fresh fairseq-train (a child of another command gets a fresh logging state: _worker).  Not the
# plugin: a child registers it as a new interpreter would (--user-dir, or a trelm-* command's
# import), so fairseq-train without --user-dir knows no trelm names, as everywhere else.
PRELOAD = ("fairseq_cli.train", "fairseq_cli.validate")
# read once, when the interpreter or the libraries torch loads start: a forked child cannot
# change them, so a command that sets them otherwise needs a server started with its values
START_TIME_VARS = ("LOGLEVEL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                   "OPENBLAS_L2_SIZE", "LD_PRELOAD", "LD_LIBRARY_PATH", "KMP_AFFINITY", "GOMP_CPU_AFFINITY")
WARM_MODULES = ("fairseq_cli.", "trelm_fairseq.")  # what ``python -m`` may run warm (name prefixes)
_HEADER = struct.Struct("!I")

_lock = threading.Lock()
_servers: Dict[Tuple, "_Server"] = {}
_entry_points: Optional[Dict[str, str]] = None


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _entry_of(cmd: List[str]) -> Optional[Dict[str, str]]:
    """What the warm server would run for ``cmd``: a fairseq-* / trelm-* console script installed
    beside this interpreter ({"entry": "module:function"}), or ``python -m`` of a fairseq_cli /
    trelm_fairseq module with this interpreter ({"module": name}); None for anything else."""
    global _entry_points
    if not cmd:
        return None
    here = os.path.dirname(os.path.abspath(sys.executable))
    if len(cmd) >= 3 and cmd[1] == "-m" and os.path.abspath(cmd[0]) == os.path.abspath(sys.executable):
        if cmd[2].startswith(WARM_MODULES):
            return {"module": cmd[2]}
        return None
    if os.path.dirname(os.path.abspath(cmd[0])) != here:
        return None
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {ep.name: ep.value for ep in entry_points(group="console_scripts")
                         if ep.name.startswith(("fairseq-", "trelm-"))}
    entry = _entry_points.get(os.path.basename(cmd[0]))
    return {"entry": entry} if entry else None


def _start_key(env: Dict[str, str]) -> Tuple:
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("PYTHON") or k in START_TIME_VARS))


def _send(sock: socket.socket, obj, fds: Sequence[int] = ()) -> None:
    data = json.dumps(obj).encode("utf-8")
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload[:1]], list(fds))
        sock.sendall(payload[1:])
    else:
        sock.sendall(payload)


def _recv(sock: socket.socket, with_fds: bool = False):
    """One message (and the fds sent with it); None at end of stream."""
    fds: List[int] = []
    if with_fds:
        first, fds, _, _ = socket.recv_fds(sock, 1, 4)
        rest = _recv_exact(sock, _HEADER.size - 1) if first else None
        if rest is None:  # the caller went away (mid-message, too)
            return None, fds
        head = first + rest
    else:
        head = _recv_exact(sock, _HEADER.size)
    if head is None or len(head) < _HEADER.size:
        return (None, fds) if with_fds else None
    body = _recv_exact(sock, _HEADER.unpack(head)[0])
    msg = json.loads(body.decode("utf-8")) if body is not None else None
    return (msg, fds) if with_fds else msg


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class WarmProcess:
    """A command forked from the warm server: the part of ``subprocess.Popen`` that
    ``fileio.run_logged`` and the tests use."""

    def __init__(self, sock: socket.socket, stdout, pid: int):
        self._sock, self.stdout, self.pid = sock, stdout, pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            self._sock.settimeout(timeout)
            try:
                msg = _recv(self._sock)
            except socket.timeout:
                raise subprocess.TimeoutExpired("warm child", timeout)
            status = (msg or {}).get("status")
            # no status: the monitor itself died (a process-group kill took it): as killed
            self.returncode = -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)
            self._sock.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _Server:
    def __init__(self, env: Dict[str, str]):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # this file run as a script: the server imports no trelm_fairseq module (see PRELOAD)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(child.fileno())],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(child.fileno(),))
        child.close()
        self.sock = parent
        ready = _recv(self.sock)
        if not ready or not ready.get("ready"):
            self.close()
            raise OSError(f"warm server did not start: {(ready or {}).get('error', 'no answer')}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def launch(self, argv: List[str], entry: Dict[str, str], env: Dict[str, str], cwd: Optional[str]) -> WarmProcess:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        r, w = os.pipe()
        try:
            umask = os.umask(0o022)
            os.umask(umask)
            # a new interpreter started from here would inherit an ignored SIGINT (and then not
            # install its KeyboardInterrupt handler): the child does as it would
            sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _send(self.sock, {"argv": argv, "run": entry, "env": env, "umask": umask, "sigint_ignored": sigint_ignored,
                              "cwd": os.path.abspath(cwd) if cwd else os.getcwd()}, fds=[theirs.fileno(), w])
        finally:
            theirs.close()
            os.close(w)
        hello = _recv(mine)
        if not hello or "pid" not in hello:
            os.close(r)
            mine.close()
            raise OSError("warm server did not start the command")
        return WarmProcess(mine, os.fdopen(r, "r", encoding="utf-8", errors="replace", buffering=1), hello["pid"])

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@atexit.register
def _close_servers() -> None:
    for server in list(_servers.values()):
        try:
            server.close()
        except OSError:
            pass
    _servers.clear()


def popen(cmd: Sequence[str], env: Dict[str, str], cwd: Optional[str] = None):
    """Start ``cmd`` (stdout and stderr merged, text lines on ``.stdout``) from the warm server
    when it is a console script it can run, else as a plain ``subprocess.Popen``."""
    cmd = [str(c) for c in cmd]
    entry = _entry_of(cmd) if enabled() and env.get(ENV_SWITCH, "1") != "0" else None
    if entry is not None:
        key = _start_key(env)
        try:
            with _lock:
                server = _servers.get(key)
                if server is None or not server.alive():
                    server = _servers[key] = _Server(env)
                return server.launch(cmd, entry, env, cwd)
        except OSError:
            pass  # no warm server here (fds, sockets, a broken preload): the plain way below
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, env=env, cwd=cwd)


# ----------------------------------------------------------------------------
# the server side
# ----------------------------------------------------------------------------


def serve() -> None:
    """The warm server's main loop (its process: ``python warm_start.py FD``, by ``_Server``)."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the commands, not for us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    # sys.path[0] is this file's folder (trelm_fairseq/), whose modules must not be importable
    # as top-level names: the console scripts' folder instead, as for a console script
    sys.path[0] = os.path.dirname(os.path.abspath(sys.executable))
    try:
        import importlib

        for name in PRELOAD:
            importlib.import_module(name)
    except BaseException as e:  # noqa: B902 -- any failure: the caller falls back to subprocesses
        _send(sock, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    _flush()  # what the imports printed goes to our /dev/null, not into the first command's output
    _send(sock, {"ready": True})
    while True:
        try:
            msg, fds = _recv(sock, with_fds=True)
        except OSError:
            return
        if msg is None:
            return  # the parent went away
        if os.fork() == 0:
            _monitor(sock, msg, fds)  # never returns
        for fd in fds:
            os.close(fd)


def _monitor(server_sock: socket.socket, msg: Dict, fds: List[int]) -> None:
    """Forks the worker, tells the caller its pid, waits for it, reports its wait status."""
    status = 1 << 8
    try:
        server_sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        reply = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:
            reply.close()
            _worker(msg, fds[1])  # never returns
        os.close(fds[1])
        _send(reply, {"pid": pid})
        status = os.waitpid(pid, 0)[1]
        _send(reply, {"status": status})
    finally:
        os._exit(0)


def _worker(msg: Dict, out_fd: int) -> None:
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN if msg.get("sigint_ignored") else signal.default_int_handler)
        os.umask(msg["umask"])
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        run = msg["run"]
        module = run.get("module")
        if module:  # python -m MODULE ARGS: argv[0] is the module's file, as runpy sets it
            import importlib.util

            spec = importlib.util.find_spec(module)
            sys.argv = [spec.origin if spec and spec.origin else module] + list(msg["argv"][3:])
        else:
            sys.argv = list(msg["argv"])
        _fresh_state(fairseq_cli=(module or run.get("entry", "")).startswith("fairseq_cli."))
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        # (the plugin, imported by --user-dir or the trelm-* command itself, sees this argv and
        # sets up its fairseq-CLI error handling as in a new interpreter)
        if module:
            import runpy

            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        else:
            import importlib

            name, _, func = run["entry"].partition(":")
            target = importlib.import_module(name)
            for part in func.split("."):
                target = getattr(target, part)
            result = target()
            code = 0 if result is None else (result if isinstance(result, int) else 1)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        _print_uncaught()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # exit "killed by SIGINT", like an interpreter
    except BaseException:  # noqa: B902 -- printed as the interpreter would print it
        _print_uncaught()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code & 0xFF)


def _print_uncaught() -> None:
    """The traceback an interpreter prints, from the entry point down (not through _worker)."""
    kind, value, tb = sys.exc_info()
    tb = tb.tb_next if tb is not None else None
    if value is not None:
        value.__traceback__ = tb  # the hook prints the exception's own traceback
    sys.excepthook(kind, value, tb)


def _fresh_state(fairseq_cli: bool) -> None:
    """What a new interpreter would have that the fork copied: unseeded random states and,
    for a command other than fairseq's CLIs (which configure logging on import, as the
    server did), no logging configuration."""
    import logging
    import random

    if not fairseq_cli:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    serve()
