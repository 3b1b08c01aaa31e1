"""Suite-wide settings."""
import atexit
import os
import shutil
import tempfile
import time

import pytest
import torch

# the tests never read or fill the user's download / source-head cache (trelm-prepare's default,
# $TRELM_CACHE or ~/.cache/trelm_fairseq): a fresh one per test process, children included
os.environ["TRELM_CACHE"] = tempfile.mkdtemp(prefix="trelm-test-cache-")
atexit.register(shutil.rmtree, os.environ["TRELM_CACHE"], True)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads spinning against other
    processes make each op far slower; one intra-op thread avoids that."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the longest test files first: pytest-xdist (--dist loadfile, scripts/run_tests.sh) hands files
# out in collection order, and a long file started last leaves one worker idle at the end
SLOW_FIRST = ("test_main_job_run.py", "test_sweep.py", "test_fault_resume.py", "test_transfer_task.py",
              "test_stages.py", "test_parsing.py", "test_distributed.py", "test_hub_interface.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Arms the fake fairseq-train (tests/_stages_helpers.py) used by the stage-runner and sweep
    tests: it appends each call to the returned jsonl path; no failure or delay is injected."""
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for k in ("FAKE_FAIL_STAGE", "FAKE_FAIL_AT", "FAKE_FAIL_MESSAGE", "FAKE_SLEEP", "FAKE_DIE_AFTER_SAVE"):
        monkeypatch.delenv(k, raising=False)
    return calls


# ----------------------------------------------------------------------------
# the run's slowest tests, kept in a file (scripts/run_tests.sh prints its path)
# ----------------------------------------------------------------------------

_seconds = {}


def pytest_runtest_logreport(report):
    """Setup + call + teardown per test (under xdist the controller gets every worker's reports)."""
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + getattr(report, "duration", 0.0)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("TRELM_SLOWEST_FILE")
    if not path or hasattr(session.config, "workerinput"):  # only the controller writes it
        return
    slowest = sorted(_seconds.items(), key=lambda kv: -kv[1])[:15]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# the 15 slowest tests of the run of {time.strftime('%Y-%m-%d %H:%M:%S')} "
                f"(seconds: setup + call + teardown; exit status {int(exitstatus)})\n")
        for nodeid, seconds in slowest:
            f.write(f"{seconds:8.2f}  {nodeid}\n")
    os.replace(tmp, path)
