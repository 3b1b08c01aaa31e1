"""The transferred model from Python, as fairseq's RoBERTa hub serves RoBERTa:

    >>> from trelm_fairseq.models.trelm import TreLMModel
    >>> trelm = TreLMModel.from_pretrained("work/trelm")          # a trelm-stages / trelm-demo run
    >>> trelm = TreLMModel.from_pretrained("ckpt.pt", data="data/en-tr")   # or checkpoint + data dir
    >>> tokens = trelm.encode("Bugün hava çok güzel.")             # target language by default
    >>> trelm.extract_features(tokens).shape                       # 1 x T x C
    >>> trelm.fill_mask("Bugün hava çok <mask>.", topk=3)          # [(sentence, probability, token)]

``interface.py``: the ``TreLMHubInterface`` class; ``loader.py``: finding a run's checkpoint and
data directory and building one.  Importing this package hands the loader to
``TreLMModel.from_pretrained`` (the plugin imports it when it registers), so the model module
imports nothing from here.
"""
from ..models.trelm import TreLMModel
from .interface import WORD_MARKER, TreLMHubInterface, sentence_ids  # noqa: F401
from .loader import from_pretrained

TreLMModel.hub_loader = staticmethod(from_pretrained)
