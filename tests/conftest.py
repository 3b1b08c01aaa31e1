"""Suite-wide settings."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads spinning against other
    processes make each op far slower; one intra-op thread avoids that."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Arms the fake fairseq-train (tests/_stages_helpers.py) used by the stage-runner and sweep
    tests: it appends each call to the returned jsonl path; no failure or delay is injected."""
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    for k in ("FAKE_FAIL_STAGE", "FAKE_FAIL_AT", "FAKE_FAIL_MESSAGE", "FAKE_SLEEP", "FAKE_DIE_AFTER_SAVE"):
        monkeypatch.delenv(k, raising=False)
    return calls
