"""Word alignment: units, grow-diag-final-and, subword gather rows, eflomal end to end (align.py)."""
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import write_synthetic_corpus  # noqa: E402

from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.modules.tri_layer import NULL_ALIGNMENT  # noqa: E402
from trelm_fairseq.preprocess import align as A  # noqa: E402
from trelm_fairseq.preprocess import vocab as V  # noqa: E402
from trelm_fairseq.preprocess.binarize import binarize_all, dataset_sizes, load_dataset  # noqa: E402


# ----------------------------------------------------------------------------- unit tests

def test_grow_diag_final_and_hand_made():
    # intersection {0-0}; no union point touches it, so grow adds nothing; final-and
    # adds the forward points whose words are both unaligned (1-2, 2-1) but not the
    # reverse-only 2-2 (source word 2 is aligned by then)
    fwd, rev = {(0, 0), (1, 2), (2, 1)}, {(0, 0), (2, 2)}
    assert A.grow_diag_final_and(fwd, rev, 3, 3) == {(0, 0), (1, 2), (2, 1)}
    # grow: neighbours of intersection points join when one of their words is unaligned
    fwd, rev = {(0, 0), (1, 1), (1, 2)}, {(0, 0), (1, 1), (2, 2)}
    assert A.grow_diag_final_and(fwd, rev, 3, 3) == {(0, 0), (1, 1), (1, 2), (2, 2)}
    # ... and not when both words are aligned already (0-1: source 0 and target 1 are)
    fwd, rev = {(0, 0), (1, 1)}, {(0, 0), (1, 1), (0, 1)}
    assert A.grow_diag_final_and(fwd, rev, 2, 2) == {(0, 0), (1, 1)}
    # a chain grows step by step from the intersection (the sweep sees new points)
    fwd, rev = {(0, 0), (1, 1), (2, 2), (3, 3)}, {(0, 0)}
    assert A.grow_diag_final_and(fwd, rev, 4, 4) == fwd
    # symmetric inputs: result = the intersection = the union
    assert A.grow_diag_final_and({(0, 1), (1, 0)}, {(0, 1), (1, 0)}, 2, 2) == {(0, 1), (1, 0)}
    assert A.grow_diag_final_and(set(), set(), 2, 3) == set()
    with pytest.raises(ValueError):
        A.grow_diag_final_and({(2, 0)}, set(), 2, 2)


def test_group_pieces_words_punctuation_and_pieces():
    words, owner = A.group_pieces(["▁ev", "ler", "▁ve", "▁", "x", "▁form", ","], "word")
    assert words == ["evler", "ve", "x", "form", ","]
    assert owner == [0, 0, 1, 2, 2, 3, 4]
    assert A.first_piece_of_unit(owner) == [0, 2, 3, 5, 6]
    words, owner = A.group_pieces(["▁", "中文", "模型", "▁的"], "piece")
    assert words == ["中文", "模型", "的"] and owner == [0, 0, 1, 2]
    # languages written without spaces align on pieces, the others on words
    assert A.resolve_unit("auto", "zh-cn") == "piece" and A.resolve_unit("auto", "tr") == "word"
    assert A.resolve_unit("word", "zh-cn") == "word"
    assert V.default_character_coverage("en", "zh-cn") == 0.9995 and V.default_character_coverage("en", "tr") == 1.0


def test_gather_rows_first_subword_sure_links_then_leftmost():
    # source: [▁the ▁hou ses] -> words the(0) houses(1); target: [▁ev ler ▁x] -> evler(0) x(1)
    src_owner, tgt_owner = [0, 1, 1], [0, 0, 1]
    s2t, t2s = A.gather_rows(src_owner, tgt_owner, {(1, 0)})
    assert s2t == [1, 1, NULL_ALIGNMENT, 3]  # both pieces of "evler" -> first piece of "houses"; </s> -> </s>
    assert t2s == [NULL_ALIGNMENT, 0, 0, 3]
    # several links: leftmost, unless another one is sure (found in both directions)
    s2t, _ = A.gather_rows(src_owner, tgt_owner, {(0, 0), (1, 0)})
    assert s2t[:2] == [0, 0]
    s2t, _ = A.gather_rows(src_owner, tgt_owner, {(0, 0), (1, 0)}, sure={(1, 0)})
    assert s2t[:2] == [1, 1]


def test_write_and_check_gather(tmp_path):
    prefix = str(tmp_path / "g")
    A.write_gather(prefix, [[1, -1, 2], [0]])
    ds = load_dataset(prefix)
    assert [ds[i].tolist() for i in range(2)] == [[1, -1, 2], [0]]
    assert not list(tmp_path.glob(".tmp*"))
    A.check_gather(prefix, [3, 1], [3, 1])
    with pytest.raises(TreLMError, match="expected one per token"):
        A.check_gather(prefix, [4, 1], [3, 1])
    with pytest.raises(TreLMError, match="outside a sentence of 2 tokens"):
        A.check_gather(prefix, [3, 1], [2, 1])


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    corpus = write_synthetic_corpus(root / "corpus", n_train=400)
    data = root / "data"
    args = Namespace(lowercase="yes", character_coverage=None, vocab_size=120, model_type="unigram",
                     max_tokens=None, long="skip", seed=1, input_sentence_size=2_000_000, threads=1)
    opts = V.vocab_options(args, "en", "tr", None)
    V.run_vocab(str(corpus), str(data), opts, threads=1, quiet=True)
    binarize_all(str(data), "en", "tr", workers=1)
    stats = A.align_data(str(data), "en", "tr", seed=1, threads=2, quiet=True)
    return {"data": data, "stats": stats, "corpus": corpus}


def test_gather_datasets_shape_and_ranges(aligned):
    data = aligned["data"]
    for split in ("train", "valid", "test"):
        s_sizes = dataset_sizes(str(data / f"para/{split}.en-tr.en"))
        t_sizes = dataset_sizes(str(data / f"para/{split}.en-tr.tr"))
        for name, own, other in (("en-tr", t_sizes, s_sizes), ("tr-en", s_sizes, t_sizes)):
            ds = load_dataset(str(data / f"para/{split}.gather.{name}"))
            assert len(ds) == len(own) and list(np.asarray(ds.sizes)) == own  # one entry per token, </s> incl.
            for k in range(len(ds)):
                row = ds[k].numpy()
                assert row[-1] == other[k] - 1  # </s> -> </s>
                assert row.min() >= NULL_ALIGNMENT and row.max() < other[k]
        with open(data / f"para/{split}.gather.en-tr.bin", "rb") as f:
            raw = f.read()
        assert len(raw) == 4 * sum(t_sizes)  # int32 on disk


def test_reversed_corpus_alignment_is_recovered(aligned):
    """target = source translated word by word in reverse order: source word i <-> target word n-1-i."""
    data = aligned["data"]
    src = (data / "work/tok/para.train.en").read_text(encoding="utf-8").splitlines()
    tgt = (data / "work/tok/para.train.tr").read_text(encoding="utf-8").splitlines()
    gather = load_dataset(str(data / "para/train.gather.en-tr"))
    back = load_dataset(str(data / "para/train.gather.tr-en"))
    right = total = right_back = total_back = 0
    for k, (s, t) in enumerate(zip(src, tgt)):
        _, s_owner = A.group_pieces(s.split())
        _, t_owner = A.group_pieces(t.split())
        s_first, t_first = A.first_piece_of_unit(s_owner), A.first_piece_of_unit(t_owner)
        n = len(s_first)
        assert len(t_first) == n
        row, row_back = gather[k].tolist(), back[k].tolist()
        for j, w in enumerate(t_owner):
            right += row[j] == s_first[n - 1 - w]
            total += 1
        for i, w in enumerate(s_owner):
            right_back += row_back[i] == t_first[n - 1 - w]
            total_back += 1
    assert right / total > 0.9, right / total
    assert right_back / total_back > 0.9, right_back / total_back
    cov = aligned["stats"]["coverage"]
    assert cov["en-tr"] > 0.9 and cov["tr-en"] > 0.9
    assert "coverage_warning" not in aligned["stats"]  # well aligned: no low-coverage warning


def test_alignment_is_reproducible_with_a_seed(aligned, tmp_path):
    if not A.seeding_available(str(tmp_path)):
        pytest.skip("no user namespaces here: eflomal cannot be seeded")
    data = aligned["data"]
    before = (data / "para/train.gather.en-tr.bin").read_bytes()
    stats = A.align_data(str(data), "en", "tr", seed=1, threads=2, quiet=True)
    assert stats["eflomal"]["deterministic"] is True
    assert (data / "para/train.gather.en-tr.bin").read_bytes() == before


def permute_target_lines(data: Path, share: float, seed: int = 3):
    """experiments/misaligned_pairs.py's permutation of `share` of the training pairs' target
    lines, then the binarized data made again from them; the 0-based permuted pair indices."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "misaligned_pairs.py"
    spec = importlib.util.spec_from_file_location("misaligned_pairs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chosen = module.permute_training_pairs(str(data), share, seed)
    binarize_all(str(data), "en", "tr", workers=1)
    return chosen


def test_every_pair_is_scored_against_decoys_and_a_partly_shuffled_corpus_is_refused(aligned, tmp_path):
    """eflomal's per-pair scores, calibrated on random pairings: the aligned corpus has few
    suspect pairs; with 30% of the training pairs permuted, the share found is about 30%, the
    pairs named are permuted ones, and the run stops before para/ changes (warn: goes on)."""
    from trelm_fairseq.preprocess import pair_check

    clean = aligned["stats"]["pair_scores"]
    assert set(clean) == {"train", "valid", "test"} and clean["train"]["suspect_share"] <= 0.05, clean
    scores = (aligned["data"] / "work/align/pair_scores.txt").read_text().split()
    assert len(scores) == sum(r["pairs"] for r in clean.values())

    data = tmp_path / "data"
    shutil.copytree(aligned["data"], data)
    permuted = permute_target_lines(data, 0.3)
    before = {f.name: f.read_bytes() for f in (data / "para").iterdir()}
    with pytest.raises(TreLMError, match=r"parallel text partly misaligned: \d+ of 400 pairs \((2\d|3\d)\.\d%\) of "
                                         rf"{data}/work/text/para.train.en / {data}/work/text/para.train.tr align no "
                                         r"better than random pairings do \(eflomal score above .*first at lines .*: "
                                         r"more than the 5% allowed \(--max-suspect-pairs\)\. Remove or fix those "
                                         r"pairs .*or pass --alignment-check warn to go on"):
        A.align_data(str(data), "en", "tr", seed=1, threads=2, quiet=True)
    assert {f.name: f.read_bytes() for f in (data / "para").iterdir()} == before

    warnings = []
    orig = A.log
    A.log = warnings.append
    try:
        stats = A.align_data(str(data), "en", "tr", seed=1, threads=2, quiet=True, alignment_check="warn")
    finally:
        A.log = orig
    train = stats["pair_scores"]["train"]
    assert 0.24 <= train["suspect_share"] <= 0.36 and train["mode"] == "warn", train
    assert all(line - 1 in set(permuted) for line in train["examples"]), (train["examples"], permuted[:10])
    assert any(w.startswith("warning: parallel text partly misaligned") for w in warnings)
    assert len(pair_check.decoy_pairs(400, 1)) == pair_check.MIN_DECOYS
    assert all(i != j for i, j in pair_check.decoy_pairs(30000, 1))


def test_length_mismatch_with_binarized_data_is_an_error(aligned, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(aligned["data"], data)
    tok = data / "work/tok/para.valid.tr"
    lines = tok.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0] + " ▁extra"
    tok.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = (data / "para/valid.gather.en-tr.bin").read_bytes()
    with pytest.raises(TreLMError, match="binarized lengths differ"):
        A.align_data(str(data), "en", "tr", quiet=True)
    assert (data / "para/valid.gather.en-tr.bin").read_bytes() == before  # untouched


def test_cli_help_and_missing_data(tmp_path):
    exe = Path(sys.executable).parent / "trelm-align"
    out = subprocess.run([str(exe), "--help"], stdout=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0 and "gather" in out.stdout and "--unit-tgt" in out.stdout
    out = subprocess.run([str(exe), "--data", str(tmp_path / "none"), "--tgt", "tr"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 2 and "file not found" in out.stderr and "Traceback" not in out.stderr


def _eflomal_child(parent: int):
    """The pid of an eflomal process whose parent is `parent`, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and argv0.endswith(b"/eflomal"):
            return int(entry)
    return None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # zombie: dead
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_eflomal_dies_with_a_killed_parent(tmp_path):
    """A trelm-prepare / trelm-align killed with SIGKILL takes eflomal with it (before: it ran on)."""
    import signal
    import time

    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
              "from trelm_fairseq.preprocess import align as A\n"
              "units = [[f'w{(k * 7 + i) % 97}' for i in range(12)] for k in range(3000)]\n"
              f"A.run_eflomal(units, units, {str(tmp_path)!r}, seed=1, rel_iterations=50)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    child = None
    try:
        deadline = time.time() + 60
        while child is None and time.time() < deadline and parent.poll() is None:
            child = _eflomal_child(parent.pid)
            time.sleep(0.05)
        assert child is not None, "eflomal never started"
        parent.kill()
        parent.wait()
        deadline = time.time() + 5
        while not _gone(child) and time.time() < deadline:
            time.sleep(0.05)
        assert _gone(child), "eflomal outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
