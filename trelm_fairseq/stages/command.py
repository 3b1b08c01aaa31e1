"""The commands a stage runs: fairseq-train's argv for a training stage, trelm-combine's for
stage 3 (the plan and the stage supply every value; nothing here reads files)."""
import os
import sys
from typing import List

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the plugin: --user-dir


def arch_args(cfg) -> List[str]:
    """``--arch A`` (+ ``--tri-layer`` when cfg has one, the default) plus a flag for every
    shape field of ``cfg`` that differs from A's."""
    from ..checkpoint import SHAPE_FIELDS, model_config

    arch = getattr(cfg, "arch", None) or "trelm"
    ref = model_config(arch)
    args = ["--arch", arch] + (["--tri-layer"] if getattr(cfg, "tri_layer", True) else [])
    for name in SHAPE_FIELDS + ("tri_layer_position",):
        value = getattr(cfg, name, None)
        if value is None or str(value) == str(getattr(ref, name, None)):
            continue
        if isinstance(value, bool):  # fairseq makes a False-default bool a store_true flag
            args += ["--" + name.replace("_", "-")] if value else []
        else:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args



def stage_command(stage, state: str) -> List[str]:
    """The argv of ``stage`` (a plan.Stage) in ``state`` ('start' restores the parent's output
    with resets; 'resume' continues the stage's own checkpoint_last.pt)."""
    if not stage.is_training:
        up, low, parent = stage.combine_inputs()
        return [sys.executable, "-m", "trelm_fairseq.cli.combine", "--upper", up, "--lower", low,
                "--parent", parent, "-o", stage.last_checkpoint, "--average", stage.plan.combine_average]
    plan, n = stage.plan, stage.updates
    cmd = stage.plan.trainer_command() + [
        plan.data, "--user-dir", USER_DIR, "--task", "trelm_transfer", "--langs", plan.langs,
        "--stage", stage.name, *plan.model_args(), "--criterion", "trelm_loss",
        "--optimizer", "adam", "--adam-betas", plan.adam_betas, "--adam-eps", str(plan.adam_eps),
        "--weight-decay", str(plan.weight_decay), "--clip-norm", str(plan.clip_norm),
        "--lr", str(plan.peak_lr(stage.name)), "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", str(plan.warmup_updates(stage.key)), "--total-num-update", str(n),
        "--max-update", str(n), "--max-tokens", str(plan.max_tokens), "--update-freq", str(plan.update_freq),
        "--tokens-per-sample", str(plan.sample_tokens()),
        # small valid sets: fairseq would drop the last partial batch otherwise
        "--required-batch-size-multiple", "1",
        "--save-dir", stage.dir, "--no-epoch-checkpoints",
        "--save-interval-updates", str(plan.save_interval(stage.key)), "--keep-interval-updates", "1",
        "--log-format", "json", "--log-interval", str(max(1, min(100, n // 20))), "--seed", str(plan.seed),
    ]
    if state == "start":
        cmd += ["--restore-file", stage.start_checkpoint(), "--reset-optimizer", "--reset-dataloader",
                "--reset-meters"]
    return cmd + list(plan.extra_args) + list(plan.stage_args.get(stage.key, []))
