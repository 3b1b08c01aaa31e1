# Import the modules whose decorators register models with fairseq.  hub_interface.py
# registers nothing and is imported where it is used (TreLMModel.from_pretrained): it reads
# checkpoints through checkpoint.py, which imports these modules.
from . import trelm, trelm_parser  # noqa: F401
