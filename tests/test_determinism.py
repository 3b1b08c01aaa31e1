"""Same seed, same result: trelm-prepare outputs byte for byte (a different seed changes
them, so the check is not vacuous), fairseq-train losses and weights bit for bit (CPU).
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _cli import BIN, USER_DIR, cli_env  # noqa: E402
from _prep_helpers import lexicon, make_tiny_source_model, write_synthetic_corpus  # noqa: E402
from _transfer_helpers import make_tiny_data_dir  # noqa: E402

from trelm_fairseq.cli import prepare as prepare_cli  # noqa: E402
from trelm_fairseq.preprocess import prepare as P  # noqa: E402

# what trelm-prepare writes that must not depend on the run: everything but the logs of
# the run itself (prepare.json and the step markers hold seconds, times and paths; the
# checkpoint's meta holds paths and seconds: its tensors are compared instead)
NOT_COMPARED = {"prepare.json", "init/model.pt"}


def tree(root: Path):
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(".prepare/")}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


RUN_DEPENDENT_KEY = re.compile(r"second|time|date|elapsed|path|dir$", re.I)


def run_dependent_facts(obj, root: str, where: str = ""):
    """Keys and values of a JSON document that describe the run rather than its result:
    timings, dates, paths (key names) and strings holding the run's folder.  Their values
    can coincide between two runs on an idle machine, so the byte comparison alone would
    not catch them; this does, on every machine."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if RUN_DEPENDENT_KEY.search(str(k)):
                found.append(f"{where}/{k}")
            found += run_dependent_facts(v, root, f"{where}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += run_dependent_facts(v, root, f"{where}[{i}]")
    elif isinstance(obj, str) and root in obj:
        found.append(f"{where} = {obj!r}")
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """trelm-prepare on user-supplied files (--parallel/--mono), three times: seeds 1, 1, 2."""
    root = tmp_path_factory.mktemp("det")
    corpus = write_synthetic_corpus(root / "corpus", n_train=150, n_valid=0, n_test=0, n_mono=40)
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70] + ["▁ka", "##lo", ","]
    source = make_tiny_source_model(root / "source", words)  # a trelm_tiny checkpoint + dict.txt
    out = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        argv = ["--tgt", "tr", "--out", root / name, "--parallel", corpus / "train.en", corpus / "train.tr",
                "--mono", corpus / "mono.tr.train", "--source-model", source, "--vocab-size", 100, "--threads", 1,
                "--seed", seed, "--no-evaluate-both", "--map-args=--ft-epochs 1"]
        out[name] = P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))
    return root, out


def test_prepare_twice_with_the_same_seed_gives_identical_outputs(prepared):
    root, summaries = prepared
    a, b = tree(root / "a"), tree(root / "b")
    assert a.keys() == b.keys()
    for must in ("dict.txt", "spm.model", "spm.vocab", "mono/tr/train.bin", "para/train.gather.en-tr.bin",
                 "para/valid.gather.tr-en.idx", "work/align/sym.moses", "init/model.pt"):
        assert must in a, must
    differ = [k for k in a if k not in NOT_COMPARED and sha(a[k]) != sha(b[k])]
    assert differ == [], differ
    # equal bytes could still be luck (rounded timings that happen to match on an idle
    # machine): the compared JSON outputs must hold no run-dependent facts at all
    for k in sorted(a):
        if k not in NOT_COMPARED and k.endswith(".json"):
            assert run_dependent_facts(json.loads(a[k].read_text(encoding="utf-8")), str(root)) == [], k
    assert summaries["a"]["alignment"]["eflomal"]["deterministic"] is True  # eflomal ran seeded
    # the initial checkpoint: same tensors (mapped embeddings included), bit for bit
    sa = torch.load(root / "a" / "init/model.pt", map_location="cpu", weights_only=False)
    sb = torch.load(root / "b" / "init/model.pt", map_location="cpu", weights_only=False)
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert summaries["a"]["mapping"]["copied"] == summaries["b"]["mapping"]["copied"] > 0
    assert summaries["a"]["mapping"]["mapped"] > 0


def test_another_seed_changes_the_outputs(prepared):
    root, _ = prepared
    a, c = tree(root / "a"), tree(root / "c")
    # --seed splits the user files differently (and seeds sentencepiece, eflomal, fastText, the mapping)
    assert sha(a["corpus/valid.tr"]) != sha(c["corpus/valid.tr"])
    ea = torch.load(root / "a" / "init/model.pt", weights_only=False)["model"]["encoder.embed_tokens.weight"]
    ec = torch.load(root / "c" / "init/model.pt", weights_only=False)["model"]["encoder.embed_tokens.weight"]
    assert ea.shape != ec.shape or not torch.equal(ea, ec)


# ----- training ----------------------------------------------------------------------

def _train(paths, save_dir, seed):
    return [str(BIN / "fairseq-train"), paths["data"], "--user-dir", USER_DIR, "--task", "trelm_transfer",
            "--langs", "en,tr", "--stage", "transfer_lower", "--arch", "trelm_tiny", "--tri-layer",
            "--criterion", "trelm_loss", "--adv-weight", "0.1", "--optimizer", "adam", "--lr", "1e-3",
            "--max-tokens", "128", "--tokens-per-sample", "32", "--required-batch-size-multiple", "1",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1",
            "--seed", str(seed), "--max-update", "6", "--num-workers", "0", "--restore-file", paths["init"],
            "--reset-optimizer", "--reset-dataloader", "--reset-meters"]


def _per_update(text):
    out = {}
    for line in text.splitlines():
        if "| train_inner | " in line:
            d = json.loads(line.split("| train_inner | ", 1)[1])
            out[int(d["num_updates"])] = {k: d.get(k) for k in ("loss", "cdlm_loss", "mlm_loss", "adv_loss",
                                                                 "disc_acc", "gnorm")}
    return out


def test_two_identical_training_runs_log_identical_losses(tmp_path):
    paths = make_tiny_data_dir(str(tmp_path / "data"), n_train=60, n_valid=8, n_test=4)
    runs = {"a": 3, "b": 3}  # name -> seed; started together
    procs = {k: subprocess.Popen(_train(paths, tmp_path / k, seed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=cli_env()) for k, seed in runs.items()}
    logs = {k: p.communicate(timeout=300)[0] for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode == 0, logs[k][-3000:]
    a, b = (_per_update(logs[k]) for k in "ab")
    assert sorted(a) == list(range(1, 7)) and len({v["loss"] for v in a.values()}) > 1
    assert a == b  # every logged statistic of every update
    wa = torch.load(tmp_path / "a" / "checkpoint_last.pt", weights_only=False)
    wb = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=False)
    for part in ("model", "criterion"):
        assert len(wa[part]) > 0
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), (part, k)


def test_the_run_dependent_check_finds_timings_paths_and_the_run_folder():
    doc = {"seed": 1, "seconds": {"total": 1.0}, "sources": [{"file": {"name": "a.txt"}},
                                                              {"note": "/tmp/run/x/corpus"}],
           "stats": {"pairs": 3, "elapsed_s": 2}, "out_dir": "x"}
    assert run_dependent_facts(doc, "/tmp/run") == [
        "/seconds", "/sources[1]/note = '/tmp/run/x/corpus'", "/stats/elapsed_s", "/out_dir"]
    assert run_dependent_facts({"seed": 1, "sources": [{"file": {"name": "a", "sha256": "0f"}}]}, "/tmp/run") == []


def test_prepare_in_two_processes_with_different_hash_seeds_gives_the_same_bytes(prepared, tmp_path):
    """Set iteration order follows PYTHONHASHSEED: the same preparation in two new
    interpreters with different hash seeds writes the same files, and the init checkpoint's
    config keys in the same order (its pickle would differ otherwise)."""
    root, _ = prepared
    corpus, source = root / "corpus", root / "source"
    outs = {}
    for hash_seed in ("1", "2"):
        out = tmp_path / f"hash{hash_seed}"
        argv = [str(BIN / "trelm-prepare"), "--tgt", "tr", "--out", str(out), "--parallel", str(corpus / "train.en"),
                str(corpus / "train.tr"), "--mono", str(corpus / "mono.tr.train"), "--source-model", str(source),
                "--vocab-size", "100", "--threads", "1", "--seed", "1", "--no-evaluate-both",
                "--map-args=--ft-epochs 1"]
        proc = subprocess.run(argv, env=dict(cli_env(), PYTHONHASHSEED=hash_seed), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:]
        outs[hash_seed] = out
    a, b = tree(outs["1"]), tree(outs["2"])
    assert a.keys() == b.keys()
    assert [k for k in a if k not in NOT_COMPARED and sha(a[k]) != sha(b[k])] == []
    sa, sb = (torch.load(o / "init/model.pt", map_location="cpu", weights_only=False) for o in outs.values())
    assert list(sa["cfg"]["model"].keys()) == list(sb["cfg"]["model"].keys())
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
