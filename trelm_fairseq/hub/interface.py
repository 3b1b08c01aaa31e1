"""The transferred model from Python, the way fairseq's ``RobertaHubInterface`` serves RoBERTa:
``TreLMHubInterface`` (encode / decode / extract_features / fill_mask) and the text-to-ids rule
it shares with the export.  ``hub/loader.py`` builds one from a run directory or a checkpoint
(``TreLMModel.from_pretrained``); the package's doc says where things come from.

Raw text is encoded exactly as ``trelm-prepare`` + the trelm tasks encode it: the language's
normalisation (``languages.normalize_line``: whitespace collapsed, lower-cased with the
language's rules when ``prepare.json`` records ``vocab.lowercase``, i.e. an uncased source
model), the data directory's sentencepiece pieces, ``dict.txt`` ids (``<unk>`` for a piece
it lacks), ``</s>`` appended (fairseq-preprocess) and ``<s>`` prepended (the tasks).  The
language id goes to the model as the tasks pass it (``lang_ids``, the index in ``--langs S,T``).
"""
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpoint import MASK
from ..errors import TreLMError
from ..languages import normalize_line

logger = logging.getLogger(__name__)

WORD_MARKER = "\u2581"  # sentencepiece's word-start marker
PREPARED = "data directory written by trelm-prepare (docs/data-layout.md)"



def sentence_ids(sp, dictionary, sentence: str, lang: str, lower_case: bool) -> List[int]:
    """trelm's ids of a raw sentence, as trelm-prepare and the tasks make them: normalize_line,
    sentencepiece pieces, dictionary ids (<unk> for a piece dict.txt lacks), <s> prepended (the
    tasks) and </s> appended (fairseq-preprocess).  The hub interface and trelm-export's
    tokenizer check both use it."""
    pieces = sp.encode(normalize_line(sentence, lang, lower_case), out_type=str)
    return [dictionary.bos()] + [dictionary.index(p) for p in pieces] + [dictionary.eos()]

class TreLMHubInterface(nn.Module):
    """A trelm model with its vocabulary: raw text in, ids / features / filled masks out.

    ``model`` (the TreLMModel, eval mode), ``dictionary`` (dict.txt + ``<mask>``), ``langs``
    ([S, T]), ``lang`` (the default language: T), ``lower_case``, ``data`` and ``checkpoint``
    (the files it was loaded from) are attributes.  ``.to(device)`` moves the model; inputs
    are moved to ``.device``."""

    def __init__(self, model: nn.Module, dictionary, spm_model: str, langs: Sequence[str],
                 lang: Optional[str] = None, lower_case: bool = False, data: Optional[str] = None,
                 checkpoint: Optional[str] = None):
        super().__init__()
        self.model = model
        self.dictionary = dictionary
        self.langs = list(langs)
        self.lower_case = bool(lower_case)
        self.data = data
        self.checkpoint = checkpoint
        self.spm_model = spm_model
        self._sp, self._sp_glued = load_sentencepiece(spm_model)
        self.mask_idx = dictionary.index(MASK)
        self.lang = self.langs[-1]  # the transferred (target) language
        self.lang = self.check_lang(lang)
        # as RobertaHubInterface: a buffer that follows .to() and tells the device
        self.register_buffer("_float_tensor", torch.tensor([0], dtype=torch.float), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._float_tensor.device

    # ----- languages ---------------------------------------------------------
    def check_lang(self, lang: Optional[str]) -> str:
        """``lang`` (default: this interface's language) if the data directory has it."""
        if lang is None:
            return self.lang
        if lang not in self.langs:
            where = self.data or "the data directory"
            raise TreLMError(f"language {lang!r}: the model was trained on {', '.join(self.langs)} "
                             f"(--langs {','.join(self.langs)} of {where}); expected one of them")
        return lang

    def lang_id(self, lang: Optional[str] = None) -> int:
        """The language id the trelm tasks give ``lang`` (its index in --langs S,T)."""
        return self.langs.index(self.check_lang(lang))

    # ----- text <-> ids -------------------------------------------------------
    def normalize(self, sentence: str, lang: Optional[str] = None) -> str:
        """The text as trelm-prepare normalised it (whitespace; lower-casing for an uncased model)."""
        return normalize_line(sentence, self.check_lang(lang), self.lower_case)

    def pieces(self, sentence: str, lang: Optional[str] = None) -> List[str]:
        """The sentencepiece pieces of the normalised sentence (trelm-prepare's work/tok/ line)."""
        text = self.normalize(sentence, lang)
        return self._sp.encode(text, out_type=str) if text else []

    def _ids(self, pieces: Sequence[str]) -> List[int]:
        return [self.dictionary.index(p) for p in pieces]  # <unk> for a piece dict.txt lacks

    def encode(self, sentence: str, lang: Optional[str] = None) -> torch.LongTensor:
        """``<s> pieces </s>`` as dictionary ids: the row the trelm tasks feed the model for
        this sentence (1-D LongTensor)."""
        return torch.tensor(sentence_ids(self._sp, self.dictionary, sentence, self.check_lang(lang), self.lower_case),
                            dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> str:
        """Ids back to text: pieces joined, the word marker turned into spaces; ``<s>``, ``</s>``
        and ``<pad>`` dropped (``<unk>`` and ``<mask>`` are kept as written)."""
        if torch.is_tensor(tokens):
            if tokens.dim() != 1:
                raise TreLMError(f"decode: expected a 1-D tensor of ids, got shape {tuple(tokens.shape)}")
            tokens = tokens.tolist()
        d = self.dictionary
        drop = {d.bos(), d.eos(), d.pad()}
        text = "".join(d[int(t)] for t in tokens if int(t) not in drop)
        return " ".join(text.replace(WORD_MARKER, " ").split())

    # ----- the model ----------------------------------------------------------
    def _batch(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise TreLMError(f"expected token ids of shape (T,) or (B, T), got {tuple(tokens.shape)}")
        limit = self.model.max_positions()
        if tokens.size(-1) > limit:
            raise TreLMError(f"{tokens.size(-1)} tokens exceed the model's maximum length {limit}")
        return tokens.long().to(device=self.device)

    def _lang_ids(self, tokens: torch.Tensor, lang: Optional[str]) -> torch.Tensor:
        # one id per sentence, as the tasks' RawLabelDataset gives them
        return torch.full((tokens.size(0),), self.lang_id(lang), dtype=torch.long, device=tokens.device)

    def extract_features(self, tokens: torch.Tensor, return_all_hiddens: bool = False,
                         lang: Optional[str] = None):
        """Last layer's states, B x T x C (a 1-D input is a batch of one); with
        ``return_all_hiddens`` the list of every layer's states (embeddings first, the
        TRILayer's output in its place), each B x T x C.  Right-pad with ``dictionary.pad()``."""
        tokens = self._batch(tokens)
        features, extra = self.model(tokens, features_only=True, return_all_hiddens=return_all_hiddens,
                                     lang_ids=self._lang_ids(tokens, lang))
        if return_all_hiddens:
            return [state.transpose(0, 1) for state in extra["inner_states"]]
        return features

    def register_classification_head(self, name: str, num_classes: int = None, inner_dim: int = None, **kwargs):
        self.model.register_classification_head(name, num_classes=num_classes, inner_dim=inner_dim, **kwargs)

    def predict(self, head: str, tokens: torch.Tensor, return_logits: bool = False, lang: Optional[str] = None):
        """A classification head's log-probabilities (or logits) for ``tokens``."""
        if head not in self.model.classification_heads:
            raise TreLMError(f"no classification head {head!r} (the checkpoint has "
                             f"{sorted(self.model.classification_heads) or 'none'})")
        logits = self.model.classification_heads[head](self.extract_features(tokens, lang=lang))
        return logits if return_logits else logits.log_softmax(dim=-1)

    def _span_ids(self, text: str, glued: bool) -> List[int]:
        """Ids of a piece of normalised text; ``glued``: it continues the word before it
        (no word marker at its start, as in the whole sentence)."""
        if not text:
            return []
        return self._ids((self._sp_glued if glued else self._sp).encode(text, out_type=str))

    def _special_ids(self) -> List[int]:
        d = self.dictionary
        return sorted({d.bos(), d.pad(), d.eos(), d.unk(), self.mask_idx})

    def encode_masked(self, masked_input: str, lang: Optional[str] = None) -> torch.LongTensor:
        """``encode`` of a sentence with one ``<mask>``: the text before it is encoded as a
        sentence start; the mask is one id (it stands for a piece with the word marker when a
        space precedes it); the text after it starts a new word when a space follows the mask,
        else it continues the masked word (e.g. a full stop)."""
        if masked_input.count(MASK) != 1:
            raise TreLMError(f"expected exactly one {MASK} in the sentence, e.g. "
                             f"'Bugün hava çok {MASK}.'; got {masked_input!r}")
        before, after = self.normalize(masked_input, lang).split(MASK)
        d = self.dictionary
        ids = ([d.bos()] + self._span_ids(before.rstrip(), glued=False) + [self.mask_idx]
               + self._span_ids(after.strip(), glued=not after.startswith(" ")) + [d.eos()])
        return torch.tensor(ids, dtype=torch.long)

    def fill_mask(self, masked_input: str, topk: int = 5, lang: Optional[str] = None) -> List[Tuple[str, float, str]]:
        """The ``topk`` most probable pieces for the one ``<mask>`` of ``masked_input``, as
        ``(filled sentence, probability, piece)`` (RobertaHubInterface.fill_mask's shape: the
        piece with a leading space when it starts a word; the probability is the model's
        softmax over the whole dictionary at the masked position).  Unlike RoBERTa's, the
        specials (``<s> <pad> </s> <unk> <mask>``) are never offered as fillers."""
        if topk < 1:
            raise TreLMError(f"fill_mask: topk={topk}, expected at least 1")
        lang = self.check_lang(lang)
        d = self.dictionary
        tokens = self._batch(self.encode_masked(masked_input, lang))
        position = int(tokens[0].eq(self.mask_idx).nonzero()[0, 0])
        with torch.no_grad():
            logits, _ = self.model(tokens, features_only=False, lang_ids=self._lang_ids(tokens, lang))
        probs = logits[0, position].float().softmax(dim=-1)
        candidates = probs.clone()
        candidates[self._special_ids()] = -1.0  # <s> <pad> </s> <unk> <mask> fill no mask
        values, indices = candidates.topk(k=min(topk, probs.numel() - len(self._special_ids())))
        out = []
        for value, index in zip(values.tolist(), indices.tolist()):
            token = d[index].replace(WORD_MARKER, " ")
            mask = MASK
            if f" {mask}" in masked_input:
                filled = masked_input.replace(f" {mask}", token)
            else:
                filled = masked_input.replace(mask, token.lstrip() if masked_input.startswith(mask) else token)
            out.append((filled, value, token))
        return out


def load_sentencepiece(path: str):
    """The data directory's sentencepiece model, twice: as trained (a word marker before the
    first word) and without that dummy prefix (text glued to what precedes it)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    if not os.path.isfile(path):
        raise TreLMError(f"{path}: sentencepiece model not found (trelm-prepare writes it next to dict.txt): "
                         f"expected a {PREPARED}")
    try:
        with open(path, "rb") as f:
            blob = f.read()
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(blob)
        sp = spm.SentencePieceProcessor(model_proto=blob)
        proto.normalizer_spec.add_dummy_prefix = False
        glued = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as e:  # not a sentencepiece model
        raise TreLMError(f"{path}: not a readable sentencepiece model ({type(e).__name__}: {e}); "
                         f"expected the spm.model of a {PREPARED}") from None
    return sp, glued
