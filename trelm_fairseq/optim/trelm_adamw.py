"""``--optimizer trelm_adamw``: torch.optim.AdamW (fused or foreach kernels) inside fairseq.

fairseq 0.12's ``--optimizer adam`` uses apex's FusedAdam when apex is installed and otherwise
its own Python Adam, which loops over the parameters one tensor at a time (about ten small
kernels per tensor and step; ~200 tensors for a base-size encoder).  This wrapper hands the
same update (decoupled weight decay, as fairseq's Adam) to ``torch.optim.AdamW``:

* ``--adamw-impl fused``: one fused kernel per step (CUDA, and CPU since torch 2.4);
* ``--adamw-impl foreach``: multi-tensor kernels;
* ``--adamw-impl auto`` (default): fused when every parameter is a floating-point CUDA tensor,
  else foreach.

It accepts fairseq's Adam options (``--adam-betas``, ``--adam-eps``, ``--weight-decay``), so
switching is ``--optimizer trelm_adamw`` on an existing command line (``trelm-stages ... --
--optimizer trelm_adamw``: the later flag wins).  Numerics: torch's AdamW adds eps to
``sqrt(v / bias_correction2)`` where fairseq's Adam adds it to ``sqrt(v)``: with eps 1e-6 the two
differ only in the first steps and only for coordinates whose ``sqrt(v)`` is near eps.

With ``--fp16`` / bf16 fairseq's FP16Optimizer keeps one flat fp32 master copy and calls this
optimizer on it (a single tensor, where any implementation is fast).  Optimizer state saved by
``--optimizer adam`` is not loaded into this one (fairseq resets it and says so): switch at a
stage boundary (stages start with --reset-optimizer anyway).
"""
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List

import torch
from omegaconf import II, OmegaConf

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer

from ..errors import TreLMError

IMPLS = ("auto", "fused", "foreach", "single_tensor")


@dataclass
class TreLMAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for AdamW"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for AdamW"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})
    adamw_impl: ChoiceEnum(IMPLS) = field(
        default="auto",
        metadata={"help": "fused: one fused kernel; foreach: multi-tensor kernels; single_tensor: a Python "
                          "loop; auto: fused when all parameters are CUDA floats, else foreach"},
    )
    lr: List[float] = II("optimization.lr")


def resolve_impl(impl: str, params) -> str:
    impl = str(impl)
    if impl not in IMPLS:
        raise TreLMError(f"--adamw-impl {impl!r}: expected one of {list(IMPLS)}")
    if impl != "auto":
        return impl
    params = list(params)
    cuda = bool(params) and all(p.is_cuda and torch.is_floating_point(p) for p in params)
    return "fused" if cuda else "foreach"


@register_optimizer("trelm_adamw", dataclass=TreLMAdamWConfig)
class TreLMAdamW(FairseqOptimizer):
    def __init__(self, cfg: TreLMAdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        self.impl = resolve_impl(cfg.adamw_impl, flat)
        kwargs = dict(self.optimizer_config)
        if self.impl == "fused":
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = self.impl == "foreach"
        self._optimizer = torch.optim.AdamW(params, **kwargs)

    @property
    def optimizer_config(self):
        betas = self.cfg.adam_betas
        if isinstance(betas, str):
            betas = tuple(float(x) for x in betas.strip("()[] ").split(","))
        elif not isinstance(betas, (tuple, list)):
            betas = tuple(OmegaConf.to_container(betas))
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return {"lr": lr, "betas": tuple(betas), "eps": self.cfg.adam_eps, "weight_decay": self.cfg.weight_decay}

    @property
    def supports_flat_params(self):
        return True  # element-wise: fine on fairseq's flat fp32 master copy

    @property
    def supports_memory_efficient_fp16(self):
        return False  # torch keeps the moments in the parameter dtype: use --fp16 (fp32 master copy)
