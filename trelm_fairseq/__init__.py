"""TreLM as a fairseq plugin: ``fairseq-train --user-dir trelm_fairseq ...``.

Importing this package registers the plugin's models, tasks and criterions
with fairseq (each once) and nothing else.
"""
import os

# torch >= 2.6 defaults torch.load to weights_only=True, which rejects fairseq
# checkpoints (they pickle argparse Namespaces / omegaconf objects).  Respect an
# explicit user setting.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from . import models, modules, data, tasks, criterions, optim  # noqa: E402,F401  (registration)
from .errors import install_fairseq_cli_hooks, running_fairseq_cli  # noqa: E402

if running_fairseq_cli():  # fairseq-train --user-dir trelm_fairseq ...: clear errors (errors.py)
    install_fairseq_cli_hooks()

__version__ = "0.1.0"
