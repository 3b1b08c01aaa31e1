"""TreLM as a fairseq plugin: ``fairseq-train --user-dir trelm_fairseq ...``.

The plugin's models, tasks, criterions and optimizer are registered with fairseq (each once)
whenever fairseq is in use: at once when fairseq is already imported (``fairseq-train
--user-dir``, ``fairseq-hydra-train``, ``import fairseq`` first), otherwise right after fairseq
finishes importing.  Importing this package alone does not import fairseq (or torch), so the
preprocessing commands that never touch fairseq start in a fraction of a second.
"""
import importlib.abc
import os
import sys

# torch >= 2.6 defaults torch.load to weights_only=True, which rejects fairseq
# checkpoints (they pickle argparse Namespaces / omegaconf objects).  Respect an
# explicit user setting.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from .errors import install_fairseq_excepthook, running_fairseq_cli  # noqa: E402

__version__ = "0.1.0"

_registered = False


def register() -> None:
    """Import the modules whose decorators register the plugin with fairseq (imports fairseq)."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        from . import models, modules, data, tasks, criterions, optim  # noqa: F401
        from . import hub  # noqa: F401  (TreLMModel.from_pretrained's loader)
    except BaseException:
        _registered = False
        raise


class _RegisterWithFairseq(importlib.abc.MetaPathFinder):
    """An import hook that calls register() once fairseq is imported.

    It wraps the loader of ``fairseq`` and of every ``trelm_fairseq.*`` module being imported,
    and registers after one of them finished executing, provided fairseq is loaded and no
    trelm_fairseq module is still half-imported: when e.g. ``trelm_fairseq.checkpoint`` pulls in
    fairseq from its first lines, the tasks (which import from checkpoint) must wait until
    checkpoint is complete.  It removes itself once registration is done.
    """

    def __init__(self):
        self.importing = 0  # trelm_fairseq modules whose code is running now

    def find_spec(self, name, path=None, target=None):
        ours = name.startswith(__name__ + ".")
        if name != "fairseq" and not ours:
            return None
        for finder in sys.meta_path:  # the spec the other finders would have returned
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        loader = spec.loader
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec  # nothing to wrap (namespace package; a class-level loader is shared)
        run = loader.exec_module

        def exec_module(module):
            del loader.exec_module  # one shot: the loader's own method again
            self.importing += ours
            try:
                run(module)
            finally:
                self.importing -= ours
            if not self.importing and "fairseq" in sys.modules and not _registered:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                register()

        loader.exec_module = exec_module
        return spec


if "fairseq" in sys.modules:  # fairseq-train --user-dir trelm_fairseq, fairseq-hydra-train, ...
    register()
else:
    sys.meta_path.insert(0, _RegisterWithFairseq())

if running_fairseq_cli():  # fairseq-train --user-dir trelm_fairseq ...: clear errors
    install_fairseq_excepthook()
    from .checkpoint import guard_fairseq_checkpoint_loading  # noqa: E402

    guard_fairseq_checkpoint_loading()  # an unreadable checkpoint: its path and the remedy
