"""docs/getting-started.md, run as written on toy inputs: a 2-layer Hugging Face BERT and a few
hundred synthetic sentence pairs.  Each ```sh block is one test, in the page's order (a module:
one worker runs them in order); the ```sh gpu blocks (one GPU, DDP, SLURM) run with --dry-run,
which checks every option and prints the commands without a GPU or a cluster.  The settings block
is replaced by the toy paths, and must define the same variables."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import lexicon, make_pairs  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"^```sh( gpu)?\n(.*?)^```", re.M | re.S)


def blocks():
    """(is a GPU / cluster block, text) of every sh block, in order."""
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy inputs and the environment the page's variables point to."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("tutorial")
    lex = lexicon(0)
    words = sorted({w.lower() for w in lex})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    conf = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=130)
    torch.manual_seed(0)
    bert = root / "bert"
    BertForMaskedLM(conf).save_pretrained(bert)
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    pairs = make_pairs(600, 1, lex)
    (root / "opus.en").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (root / "opus.tr").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    (root / "wiki.tr").write_text("".join(t + "\n" for _, t in make_pairs(200, 2, lex)), encoding="utf-8")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", TRELM_CACHE=str(root / "cache"))
    settings = {"SRC_MODEL": str(bert), "OPUS_EN": str(root / "opus.en"), "OPUS_TR": str(root / "opus.tr"),
                "WIKI": str(root / "wiki.tr"), "TGT": "tr", "WORK": str(root / "work"),
                "SCALE": "0.0002"}  # 4 updates per stage
    return {"root": root, "env": dict(env, **settings), "settings": settings}


def run_block(toy, index: int, timeout: int = 300) -> str:
    gpu, text = blocks()[index]
    if gpu:  # no GPU or cluster here: the same command line with --dry-run
        text = re.sub(r"^(trelm-stages|trelm-sweep) ", r"\1 --dry-run ", text, flags=re.M)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=toy["root"], env=toy["env"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, f"block {index} of {PAGE.name} failed:\n{text}\n{proc.stdout[-4000:]}"
    assert "Traceback" not in proc.stdout, proc.stdout[-4000:]
    return proc.stdout


def test_0_the_settings_name_every_input():
    gpu, text = blocks()[0]
    names = re.findall(r"^([A-Z_]+)=", text, re.M)
    assert not gpu and names == ["SRC_MODEL", "OPUS_EN", "OPUS_TR", "WIKI", "TGT", "WORK", "SCALE"]
    assert len(blocks()) == 10  # the page's commands, each run below


def test_1_import(toy):
    run_block(toy, 1)
    assert (toy["root"] / "work" / "source" / "model.pt").is_file()


def test_2_prepare(toy):
    out = run_block(toy, 2)
    data = toy["root"] / "work" / "data"
    assert (data / "init" / "model.pt").is_file() and (data / "prepare.json").is_file()
    assert "pairs that align no better than random pairings: train" in out


def test_3_stages_on_the_cpu(toy):
    run_block(toy, 3)
    run = toy["root"] / "work" / "run"
    summary = json.loads((run / "stages.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["done"] * 5


@pytest.mark.parametrize("index, expect", [(4, "--autocast-bf16"), (5, "--distributed-world-size 4"),
                                           (6, "#SBATCH")])
def test_4_gpu_ddp_and_slurm_command_lines(toy, index, expect):
    out = run_block(toy, index)
    assert expect in out, out[-3000:]


def test_5_probe(toy):
    run_block(toy, 7)
    init, final = json.loads((toy["root"] / "work" / "probes.json").read_text())
    assert init["split"] == final["split"] == "valid" and final["pairs"] > 10


def test_6_export_and_use(toy):
    out = run_block(toy, 8)
    assert (toy["root"] / "work" / "hf" / "config.json").is_file()
    assert re.search(r"torch\.Size\(\[1, \d+, \d+\]\)", out), out[-2000:]
    out = run_block(toy, 9)
    assert re.search(r"torch\.Size\(\[1, \d+, 32\]\)", out), out[-2000:]
