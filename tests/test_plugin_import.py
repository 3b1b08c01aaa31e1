"""Importing trelm_fairseq: no fairseq unless fairseq is in use, registration whenever it is.

Each case runs in a fresh interpreter (what is imported is process-wide state).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

REGISTERED = """
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.tasks import TASK_REGISTRY
assert {"trelm_transfer", "trelm_parsing"} <= set(TASK_REGISTRY), sorted(TASK_REGISTRY)
assert "trelm" in MODEL_REGISTRY and {"trelm_tiny", "trelm_minilm"} <= set(ARCH_MODEL_REGISTRY)
assert "trelm_loss" in CRITERION_REGISTRY and "trelm_adamw" in OPTIMIZER_REGISTRY
"""


def python(code, cwd=None, env=None, registered=False):
    """Run ``code`` in a fresh interpreter (then the registry checks, with ``registered``)."""
    code = textwrap.dedent(code) + (REGISTERED if registered else "")
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd or REPO,
                       env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=180)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr[-4000:]}"
    return p.stdout


def test_preprocessing_modules_do_not_import_fairseq():
    out = python("""
        import os, sys
        import trelm_fairseq.preprocess.corpora, trelm_fairseq.languages
        import trelm_fairseq.preprocess.libreoffice_help, trelm_fairseq.preprocess.manpages
        import trelm_fairseq
        print(sorted(m for m in ("fairseq", "fairseq_cli", "torch") if m in sys.modules))
        print(trelm_fairseq.__version__, os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
        """, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": ""})
    assert out.split("\n")[0] == "[]"
    assert out.split("\n")[1] == "0.1.0 "      # an explicit setting (here: empty) is respected


def test_weights_only_default_is_set():
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    p = subprocess.run([sys.executable, "-c", "import os, trelm_fairseq; print(os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'])"],
                       cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=60)
    assert p.stdout.strip() == "1"


def test_fairseq_imported_later_gets_the_plugin_registered(tmp_path):
    (tmp_path / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(10)))
    python(f"""
        import sys
        import trelm_fairseq
        assert "fairseq" not in sys.modules
        import fairseq.tasks
        from fairseq import options
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [{str(tmp_path)!r}, "--task", "trelm_transfer",
                                                    "--arch", "trelm_tiny", "--langs", "en,tr"])
        task = fairseq.tasks.setup_task(args)
        assert type(task).__name__ == "TreLMTransferTask" and "<mask>" in task.dictionary.indices
        """, registered=True)


def test_fairseq_first_then_the_plugin():
    python("""
        import fairseq
        import trelm_fairseq
        """, registered=True)


@pytest.mark.parametrize("first", ["trelm_fairseq.checkpoint", "trelm_fairseq.tasks.trelm_transfer",
                                   "trelm_fairseq.preprocess.binarize"])
def test_a_plugin_module_that_imports_fairseq_itself(first):
    """fairseq pulled in from inside a half-imported trelm_fairseq module: registration waits
    until that module is complete (the tasks import from trelm_fairseq.checkpoint)."""
    python(f"""
        import sys
        import {first}
        assert "fairseq" in sys.modules
        assert not any(type(f).__name__ == "_RegisterWithFairseq" for f in sys.meta_path)
        """, registered=True)


def test_fairseq_train_user_dir_sees_the_architectures(tmp_path):
    exe = Path(sys.executable).parent / "fairseq-train"
    p = subprocess.run([str(exe), str(tmp_path), "--user-dir", str(REPO / "trelm_fairseq"), "--arch", "list", "x"],
                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert "trelm_tiny" in p.stdout and "trelm_minilm" in p.stdout, p.stdout[-3000:]


def test_fairseq_hydra_train_sees_the_task_and_the_architecture(tmp_path):
    """fairseq-hydra-train imports fairseq, then the user dir: trelm_transfer builds trelm_tiny
    (and stops at the task's own check: the default 512 tokens per sample exceed its 128)."""
    (tmp_path / "dict.txt").write_text("w1 1\nw2 1\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "t.yaml").write_text(f"""# @package _global_
common: {{user_dir: {REPO / 'trelm_fairseq'}, log_format: simple}}
task: {{_name: trelm_transfer, data: {tmp_path}, langs: "en,tr"}}
criterion: trelm_loss
model: {{_name: trelm_tiny}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{lr: [0.001], max_update: 1}}
dataset: {{max_tokens: 64}}
checkpoint: {{save_dir: {tmp_path / 'ck'}}}
hydra: {{run: {{dir: {tmp_path / 'hydra'}}}}}
""")
    exe = Path(sys.executable).parent / "fairseq-hydra-train"
    p = subprocess.run([str(exe), "--config-dir", str(tmp_path / "conf"), "--config-name", "t"], cwd=tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert "exceeds the model's max_positions 128" in p.stdout, p.stdout[-3000:]
