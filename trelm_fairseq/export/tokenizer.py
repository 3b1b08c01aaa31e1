"""The exported fast tokenizer: trelm's own encoding of raw text, written as one
``tokenizers`` pipeline (tokenizer.json) that ``transformers`` loads with its stock classes.

trelm encodes a raw sentence as trelm-prepare did before binarizing it, then as the tasks
read it back:

1. ``languages.normalize_line(line, lang, lower_case)``: every run of (Python) whitespace
   becomes one space, the ends are stripped; lower-cased by the language's rules when the
   source model is uncased (Turkish / Azeri ``I -> ı``, ``İ -> i``; Python's ``str.lower``,
   with its final-sigma rule);
2. sentencepiece (unigram): its own normaliser (the precompiled charsmap, e.g. nmt_nfkc,
   extra spaces removed), a ``▁`` before the text and for every space, Viterbi segmentation;
3. fairseq's Dictionary: piece -> id (``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, the
   dict.txt symbols, ``<mask>`` last), ``</s>`` appended (fairseq-preprocess), ``<s>``
   prepended (the masked-LM tasks).

The tokenizer below does the same in one ``tokenizers`` pipeline: normalisers for steps 1-2,
a Metaspace pre-tokenizer, a Unigram model over the dictionary's symbols (ids = fairseq ids,
scores = the sentencepiece pieces' log probabilities) and a post-processor adding ``<s> ...
</s>``.  Exact for every character of the Unicode version of the running Python; characters
assigned later (55 of them between Unicode 14 and 16, none in a supported language's script)
may be lower-cased by the tokenizer and not by Python.
"""
import os
import sys
from typing import Dict, List, Sequence

from ..errors import TreLMError
from ..fileio import write_json

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")   # fairseq Dictionary's ids 0..3
MASK = "<mask>"
UNK_ID = 3
_NORMAL, _UNKNOWN, _CONTROL = 1, 2, 3           # sentencepiece ModelProto.SentencePiece.Type
_UNIGRAM = 1                                    # sentencepiece TrainerSpec.ModelType
_DOTTED_I = ("tr", "az")                        # languages.lower's Turkish / Azeri rule
# Python's final-sigma rule (str.lower): Σ -> ς after a cased letter (case-ignorables
# skipped) and not before one; tokenizers' Lowercase maps every Σ to σ
_FINAL_SIGMA = r"(?<=\p{Cased}\p{Case_Ignorable}*)Σ(?!\p{Case_Ignorable}*\p{Cased})"


def read_spm(path: str):
    """The sentencepiece ModelProto of ``path``; TreLMError naming the file when it is missing,
    unreadable or of a kind the exported tokenizer cannot reproduce."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not os.path.isfile(path):
        raise TreLMError(f"{path}: sentencepiece model not found (expected the spm.model trelm-prepare wrote "
                         "next to dict.txt: the tokenizer is built from it)")
    proto = pb.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as e:
        raise TreLMError(f"{path}: not a sentencepiece model: {e}") from None
    if not proto.pieces:
        raise TreLMError(f"{path}: not a sentencepiece model (no pieces)")
    if proto.trainer_spec.model_type != _UNIGRAM:
        raise TreLMError(f"{path}: sentencepiece model type {proto.trainer_spec.model_type}: expected a unigram "
                         "model (trelm-prepare's default); other types are not exported")
    if proto.trainer_spec.byte_fallback:
        raise TreLMError(f"{path}: byte_fallback models are not exported (expected trelm-prepare's unigram model)")
    odd = [p.piece for p in proto.pieces if p.type not in (_NORMAL, _UNKNOWN, _CONTROL)]
    if odd:
        raise TreLMError(f"{path}: {len(odd)} user-defined / byte / unused pieces (first {odd[0]!r}): expected only "
                         "normal pieces and unk/bos/eos, as trelm-prepare trains them")
    return proto


def check_matches(proto, symbols: Sequence[str], spm_path: str, dict_path: str) -> None:
    """The dictionary holds exactly the sentencepiece model's normal pieces (trelm-prepare writes
    dict.txt from spm.model): otherwise the two files come from different runs."""
    pieces = [p.piece for p in proto.pieces if p.type == _NORMAL]
    in_dict = set(symbols)
    missing = [p for p in pieces if p not in in_dict]
    extra = [s for s in symbols[len(SPECIALS):] if s != MASK and s not in set(pieces)]
    if missing or extra:
        what = (f"{len(missing)} of its pieces are not in {dict_path} (first {missing[0]!r})" if missing else
                f"{dict_path} has {len(extra)} symbols that are not pieces of it (first {extra[0]!r})")
        raise TreLMError(f"{spm_path}: does not match {dict_path}: {what}; expected the dict.txt trelm-prepare "
                         "wrote from this spm.model (same data directory, same run)")


def python_whitespace() -> str:
    """Every character Python's str.split() splits on (normalize_line's whitespace)."""
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def build_tokenizer(proto, symbols: Sequence[str], lang: str, lower_case: bool):
    """A ``tokenizers.Tokenizer`` encoding raw text to the ids of ``symbols`` (the fairseq
    dictionary with ``<mask>``), as trelm does (module doc)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    scores: Dict[str, float] = {p.piece: p.score for p in proto.pieces if p.type == _NORMAL}
    vocab = [(s, 0.0 if s in SPECIALS or s == MASK else float(scores[s])) for s in symbols]
    tok = Tokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))

    spaces = "".join(f"\\x{{{ord(c):x}}}" for c in python_whitespace())
    steps: List = [normalizers.Replace(Regex(f"[{spaces}]+"), " "), normalizers.Strip()]
    if lower_case:
        if lang.strip().lower().replace("_", "-").split("-")[0] in _DOTTED_I:
            steps += [normalizers.Replace("I", "ı"), normalizers.Replace("İ", "i")]
        steps += [normalizers.Replace(Regex(_FINAL_SIGMA), "ς"), normalizers.Lowercase()]
    spec = proto.normalizer_spec
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    bos, eos = symbols.index("<s>"), symbols.index("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=(s == MASK))
                            for s in list(SPECIALS) + [MASK]])
    return tok


def tokenizer_config(max_length: int) -> Dict:
    """tokenizer_config.json: the generic fast tokenizer over tokenizer.json, RoBERTa's specials."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "cls_token": "<s>", "sep_token": "</s>", "mask_token": MASK,
        "model_max_length": int(max_length),
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }


def write_tokenizer(tok, folder: str, max_length: int) -> List[str]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json into ``folder`` (the
    export's temporary folder); returns the file names."""
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = tokenizer_config(max_length)
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    write_json(os.path.join(folder, "special_tokens_map.json"),
               {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token",
                                       "sep_token", "mask_token")})
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
