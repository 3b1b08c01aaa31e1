# Import the modules whose decorators register models with fairseq.  The hub (trelm_fairseq/hub/,
# TreLMModel.from_pretrained's loader) registers nothing with fairseq; the plugin imports it.
from . import trelm, trelm_parser  # noqa: F401
