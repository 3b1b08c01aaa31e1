"""Downstream fine-tuning of one pre-trained checkpoint: dependency parsing (UAS/LAS)
and module classification (accuracy); each run is skipped once its test record exists,
and keeps only its best checkpoint."""
import os
from typing import Dict, List

from ..layout import BEST_CHECKPOINT, StageDir
from ..fileio import cached_json, read_json
from .budgets import Budgets
from .commands import BIN, SINGLE_THREAD, USER_DIR, run
from .surgery import model_shape_args


def parser_train_command(parse_data: str, checkpoint: str, out: str, budgets: Budgets, seed: int) -> List[str]:
    """fairseq-train argv fine-tuning ``checkpoint`` for dependency parsing."""
    n = budgets.n("parse_updates")
    return [
        os.path.join(BIN, "fairseq-train"), parse_data, "--user-dir", USER_DIR,
        "--task", "trelm_parsing", "--criterion", "trelm_parsing",
        *model_shape_args(checkpoint, prefix="trelm_parser"),
        "--restore-file", checkpoint, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--reset-lr-scheduler", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-6",
        "--weight-decay", "0.01", "--clip-norm", "5", "--lr", str(budgets.finetune_lr),
        "--lr-scheduler", "polynomial_decay", "--warmup-updates", str(max(1, n // 10)),
        "--total-num-update", str(n), "--max-update", str(n), "--batch-size", "16",
        "--max-tokens", str(budgets.max_tokens), "--save-dir", out, "--no-epoch-checkpoints",
        # validate three times, the last at the final update (fairseq validates there anyway)
        "--save-interval-updates", str(-(-n // 3)), "--keep-interval-updates", "1",
        "--validate-interval-updates", str(-(-n // 3)),
        "--best-checkpoint-metric", "las", "--maximize-best-checkpoint-metric",
        "--seed", str(seed), "--log-format", "simple", "--log-interval", "25", "--num-workers", "0",
    ]


def finetune_parser(parse_data: str, checkpoint: str, out: str, budgets: Budgets, seed: int) -> Dict:
    """Fine-tune a trelm checkpoint for dependency parsing, evaluate on test (UAS/LAS)."""
    def train_and_test() -> Dict:
        run(parser_train_command(parse_data, checkpoint, out, budgets, seed), StageDir(out).train_log,
            f"parsing fine-tune ({os.path.basename(os.path.dirname(out))}, seed {seed})", SINGLE_THREAD)
        run([os.path.join(BIN, "trelm-parse-eval"), "--checkpoint", StageDir(out).best,
             "--data", parse_data, "--split", "test", "--output-prefix", os.path.join(out, "test"), "--quiet"],
            os.path.join(out, "eval.log"), f"parsing test evaluation ({os.path.basename(os.path.dirname(out))})",
            SINGLE_THREAD)
        metrics = read_json(os.path.join(out, "test.json"), "parsing test metrics")
        prune_checkpoints(out)
        return metrics

    return cached_json(os.path.join(out, "test_metrics.json"), train_and_test)


def finetune_classifier(setting_dir: str, checkpoint: str, out: str, budgets: Budgets, seed: int,
                        train_lang_id: int, test_lang_id: int) -> float:
    """sentence_prediction fine-tune on ``setting_dir``; test accuracy (%) of the best-valid checkpoint."""
    from .. import classification as cls

    def train_and_test() -> Dict:
        from ..checkpoint import checkpoint_model_config, load_checkpoint

        shape = model_shape_args(checkpoint)
        arch = shape[1]
        # sentence_prediction sets the model's positions to its --max-positions: keep the checkpoint's
        max_positions = int(checkpoint_model_config(load_checkpoint(checkpoint), checkpoint).max_positions)
        cmd = cls.finetune_command(setting_dir, checkpoint, out, arch, budgets.n("cls_updates"), train_lang_id,
                                   seed=seed, lr=budgets.finetune_lr, max_positions=max_positions, extra=shape[2:])
        what = f"{os.path.basename(os.path.dirname(out))} {os.path.basename(out)}"
        run(cmd, StageDir(out).train_log, f"classification fine-tune ({what})", SINGLE_THREAD)
        stdout = run(cls.evaluate_command(setting_dir, StageDir(out).best, test_lang_id),
                     os.path.join(out, "eval.log"), f"classification test evaluation ({what})", SINGLE_THREAD)
        accuracy = cls.parse_accuracy(stdout)
        prune_checkpoints(out)
        return {"accuracy": accuracy}

    return cached_json(os.path.join(out, "test_accuracy.json"), train_and_test)["accuracy"]


def prune_checkpoints(out: str) -> None:
    """After a fine-tune is evaluated only checkpoint_best.pt is kept: each checkpoint of the
    demo's model is ~230 MB with its optimizer state, and the interval / last copies only
    serve to resume a run that is already finished."""
    for name in os.listdir(out):
        if name.startswith("checkpoint") and name.endswith(".pt") and name != BEST_CHECKPOINT:
            os.remove(os.path.join(out, name))
