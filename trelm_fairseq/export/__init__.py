"""``trelm-export``: a trelm checkpoint + its data directory -> a Hugging Face model directory
that ``transformers`` loads offline with its stock classes (no ``trust_remote_code``):

    config.json, model.safetensors       BERT or RoBERTa with the MLM head (model.py)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                         trelm's normalisation + sentencepiece + fairseq ids (tokenizer.py)
    README.md                            model card (card.py)
    export.json                          what was exported and the export check's figures

Everything is checked before anything is written, and the directory is written into a
temporary folder renamed into place (fileio.atomic_folder).  Before the rename the export is
loaded back with transformers and compared with the fairseq model on sentences of the data's
valid split (hidden states and MLM logits, tokenizer ids against trelm's own encoding): a
difference above ``TOLERANCE`` is an error and nothing is written.
"""
import contextlib
import os
from typing import Callable, Dict, List, Optional, Union

from ..layout import DataDir
from ..errors import TreLMError, write_error
from ..fileio import (atomic_folder, check_output_folder, output_lock, read_json, read_lines,
                      remove_stale_temporaries_of, usual_file_mode, write_failure, write_json, write_text)
from .card import find_stages, model_card, usage_lines
from .model import LAYOUTS  # noqa: F401

TOLERANCE = 1e-4
RECORD = "export.json"  # in every export: also what lets --force replace the folder
CHECK_SENTENCES = 8


def _data_record(data: str) -> Dict:
    path = DataDir(data).prepare_json
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: not found: expected a data directory prepared by trelm-prepare (its record says "
                         "which languages and whether the text was lower-cased)")
    record = read_json(path, "trelm-prepare record")
    if not isinstance(record, dict) or not record.get("langs"):
        raise TreLMError(f"{path}: no 'langs' field: expected trelm-prepare's record of this data directory")
    return record


def resolve_lowercase(option: str, prepare: Dict, data: str) -> bool:
    """Whether trelm-prepare lower-cased the text (prepare.json vocab.lowercase), or the override."""
    if option in ("yes", "no"):
        return option == "yes"
    if option != "auto":
        raise TreLMError(f"--lowercase {option}: expected auto, yes or no")
    lower = (prepare.get("vocab") or {}).get("lowercase")
    if lower is None:
        raise TreLMError(f"{os.path.join(data, 'prepare.json')}: no vocab.lowercase: cannot tell whether the text was "
                         "lower-cased before sentencepiece; pass --lowercase yes or no")
    return bool(lower)


def valid_sentences(data: str, lang: str, n: int = 4 * CHECK_SENTENCES) -> List[str]:
    """Up to n sentences of the language's valid split: the raw corpus text when trelm-prepare
    fetched it, else the normalised text it wrote; a few fixed sentences when neither is there."""
    from ..layout import text_path

    work = os.path.join(data, "work")
    for path in (os.path.join(data, "corpus", f"valid.{lang}"), os.path.join(data, "corpus", f"mono.{lang}.valid"),
                 text_path(work, "para", "valid", lang), text_path(work, "mono", "valid", lang)):
        if os.path.isfile(path):
            # words, or characters for scripts without spaces (zh, ja, km)
            lines = [ln for ln in read_lines(path) if 3 <= len(ln.split()) <= 40 or 6 <= len(ln) <= 120]
            if lines:
                return lines[:n]
    return ["İstanbul ve IŞIK 123 😀", "  a  short   test  ", "one more sentence"][:n]


def masked_example(sentences: List[str]) -> Dict:
    """A real sentence with one word replaced by <mask> (for the card and the demo): a plain
    sentence of 5-14 words (starts with a letter, ends with a full stop, mostly words), its
    longest inner word masked."""
    def plain(s: str) -> bool:
        words = s.split()
        wordy = sum(w.strip(".,;:!?\"'()").isalpha() for w in words)
        return 5 <= len(words) <= 14 and s[0].isalpha() and s.endswith(".") and wordy >= 0.8 * len(words)

    for s in sorted(sentences, key=lambda x: not plain(x)):
        words = s.split()
        inner = [i for i in range(1, len(words) - 1) if words[i].isalpha() and len(words[i]) >= 3]
        if len(words) >= 3 and inner:
            i = max(inner, key=lambda j: len(words[j]))
            return {"sentence": s, "word": words[i], "masked": " ".join(words[:i] + ["<mask>"] + words[i + 1:])}
    s = (sentences or ["a b c"])[0]  # no spaced words (zh, ja, km): the middle character
    i = len(s) // 2
    return {"sentence": s, "word": s[i], "masked": s[:i] + "<mask>" + s[i + 1:]}


def _results(results: Union[None, str, Dict]):
    if results is None or isinstance(results, dict):
        return results, None
    return read_json(results, "results file"), results


def _check(tmp: str, model, lang_id: int, sentences: List[str], sp, dictionary, lang: str, lower: bool,
           max_len: int, masked: str) -> Dict:
    """Load the written folder with transformers' stock classes and compare it with the fairseq model."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from ..hub.interface import sentence_ids  # the ids trelm itself gives a raw sentence
    from transformers.utils import logging as hf_logging

    from .model import compare

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(tmp)
    hf_model = AutoModelForMaskedLM.from_pretrained(tmp)
    ids = []
    for s in sentences:
        ours, theirs = sentence_ids(sp, dictionary, s, lang, lower), tok(s)["input_ids"]
        if ours != theirs:
            raise TreLMError(f"export check: the exported tokenizer gives {theirs[:12]}... for {s!r}, trelm's encoding "
                             f"{ours[:12]}...: please report this sentence")
        ids.append(ours[:max_len])
    d_hidden, d_logits, scale = compare(model.encoder, hf_model, ids, lang_id, dictionary.pad())
    if not (d_hidden <= TOLERANCE and d_logits <= TOLERANCE):
        raise TreLMError(f"export check: the exported model differs from the checkpoint by {d_hidden:.2e} (hidden "
                         f"states) / {d_logits:.2e} (MLM logits), expected <= {TOLERANCE}: nothing was written")
    with torch.no_grad():
        fill = pipeline("fill-mask", model=hf_model, tokenizer=tok, top_k=3)(masked)
    return {"sentences": len(ids), "max_abs_diff_hidden": d_hidden, "max_abs_diff_logits": d_logits,
            "max_abs_logit": scale, "tolerance": TOLERANCE,
            "fill_mask": [{"token_str": p["token_str"], "score": float(p["score"])} for p in fill]}


def export_model(checkpoint: str, data: str, out: str, lang: Optional[str] = None,
                 results: Union[None, str, Dict] = None, force: bool = False, layout: str = "auto",
                 lowercase: str = "auto", check: bool = True, log: Callable[[str], None] = lambda m: None) -> Dict:
    """Export ``checkpoint`` (a trelm checkpoint made with ``data``'s dict.txt) for language
    ``lang`` (default: the data's target language) into the folder ``out``; returns the record
    written to ``out/export.json``.  TreLMError (naming the file and what was expected) for bad
    input; nothing is written then."""
    out = os.path.abspath(out)
    # --force replaces only an earlier export (its export.json), never an input, a folder above
    # one, or the working directory; one writer per output folder
    inputs = {"the checkpoint": checkpoint, "the data directory (--data)": data,
              "--results": results if isinstance(results, str) else None}
    check_output_folder(out, inputs, force, RECORD, "trelm-export")
    with output_lock(out, "trelm-export"):
        check_output_folder(out, inputs, force, RECORD, "trelm-export")  # as it is now that we hold it
        remove_stale_temporaries_of(out, log)  # what a killed export to the same folder left
        return _export(checkpoint, data, out, lang, results, layout, lowercase, check, log)


def _export(checkpoint: str, data: str, out: str, lang: Optional[str], results, layout: str, lowercase: str,
            check: bool, log: Callable[[str], None]) -> Dict:
    from ..checkpoint import load_model
    from . import model as M
    from . import tokenizer as T

    x = _checked_inputs(checkpoint, data, lang, lowercase, layout)
    model, _ = load_model(checkpoint, x["dictionary"])
    model.eval()
    config = M.hf_config(x["cfg"], model.encoder, x["layout"], x["lang"], checkpoint)
    info = _description(checkpoint, data, out, x, config, results)
    log(f"exporting {checkpoint} ({x['layout']} layout, {config['num_hidden_layers']} layers, language {x['lang']} "
        f"= row {x['lang_id']}, lower-case {x['lower']}) to {out}")
    tok = T.build_tokenizer(x["proto"], x["dictionary"].symbols, x["lang"], x["lower"])
    with atomic_folder(out) as tmp:
        _write_model(tmp, model, config, x, tok, info, check, log)
        write_text(os.path.join(tmp, "README.md"), model_card(info))
        record = {k: v for k, v in info.items() if k not in ("prepare", "stages", "results", "corpus")}
        write_json(os.path.join(tmp, RECORD), record)
    return record


def _checked_inputs(checkpoint: str, data: str, lang: Optional[str], lowercase: str, layout: str) -> Dict:
    """Everything the export needs from the data directory and the checkpoint, checked
    before anything is built: the record of trelm-prepare, the language and casing, the
    dictionary and sentencepiece model (matching each other and the checkpoint), the model
    config (representable) and the layout."""
    from ..checkpoint import check_vocabulary, checkpoint_model_config, load_checkpoint, load_dictionary
    from . import model as M
    from . import tokenizer as T

    prepare = _data_record(data)
    langs = list(prepare["langs"])
    lang = lang or prepare.get("tgt") or langs[-1]
    dict_path, spm_path = DataDir(data).dict_txt, DataDir(data).spm_model
    dictionary = load_dictionary(dict_path, hint="written by trelm-prepare")
    proto = T.read_spm(spm_path)
    T.check_matches(proto, dictionary.symbols, spm_path, dict_path)
    state = load_checkpoint(checkpoint)
    cfg = checkpoint_model_config(state, checkpoint)  # a non-trelm model is an error here
    M.check_representable(cfg, checkpoint)
    check_vocabulary(state, checkpoint, dictionary, dict_path, "a checkpoint trained on this data directory",
                     langs=langs, langs_source=DataDir(data).prepare_json)
    return {"prepare": prepare, "lang": lang, "lower": resolve_lowercase(lowercase, prepare, data),
            "dictionary": dictionary, "proto": proto, "cfg": cfg, "layout": M.choose_layout(cfg, layout, checkpoint),
            "lang_id": M.language_id(langs, lang, cfg.n_langs, checkpoint, DataDir(data).prepare_json),
            "sentences": valid_sentences(data, lang)}


def _description(checkpoint: str, data: str, out: str, x: Dict, config: Dict, results) -> Dict:
    """What export.json and the model card say about the export."""
    example = masked_example(x["sentences"])
    results_obj, results_path = _results(results)
    corpus_json = os.path.join(data, "corpus", "corpus.json")
    source_cfg = os.path.join(x["prepare"].get("source_model") or "", "config.json")
    return {
        "checkpoint": os.path.abspath(checkpoint), "data": os.path.abspath(data), "out": out, "lang": x["lang"],
        "lang_id": x["lang_id"], "layout": x["layout"], "lowercase": x["lower"], "config": config,
        "tri_layer_position": config["trelm"]["tri_layer_position"], "example": example,
        "prepare": x["prepare"], "stages": find_stages(checkpoint), "results": results_obj,
        "results_source": results_path or ("the main job's report" if results_obj else None),
        "corpus": read_json(corpus_json, "corpus record") if os.path.isfile(corpus_json) else None,
        "source_name": (read_json(source_cfg).get("_name_or_path") if os.path.isfile(source_cfg) else None),
        "usage": usage_lines(out, example["masked"]),
    }


@contextlib.contextmanager
def _library_writes(path: str):
    """A failed write inside safetensors / tokenizers (disk full, read-only) as the TreLMError
    naming the file, as every other write of the package."""
    try:
        yield
    except Exception as e:
        cause = write_failure(e)
        if cause is not None:
            raise write_error(path, cause) from None
        raise


def _write_model(tmp: str, model, config: Dict, x: Dict, tok, info: Dict, check: bool, log) -> None:
    """config.json, model.safetensors and the tokenizer into ``tmp``; with ``check``, loaded
    back with stock transformers classes and compared with the fairseq model (info["check"])."""
    import sentencepiece as spm
    from safetensors.torch import save_file

    from . import model as M
    from . import tokenizer as T

    max_positions = x["cfg"].max_positions
    write_json(os.path.join(tmp, "config.json"), config)
    weights = os.path.join(tmp, "model.safetensors")
    with _library_writes(os.path.join(info["out"], "model.safetensors")):  # named as the user will find it
        save_file(M.hf_state_dict(model.encoder, x["layout"], x["lang_id"]), weights, metadata={"format": "pt"})
    os.chmod(weights, usual_file_mode())  # the writer may make it private
    with _library_writes(os.path.join(info["out"], "tokenizer.json")):
        T.write_tokenizer(tok, tmp, max_positions)
    if check:
        sp = spm.SentencePieceProcessor(model_proto=x["proto"].SerializeToString())
        info["check"] = _check(tmp, model, x["lang_id"], x["sentences"][:CHECK_SENTENCES], sp, x["dictionary"],
                               x["lang"], x["lower"], max_positions, info["example"]["masked"])
        log(f"export check: max abs difference {info['check']['max_abs_diff_hidden']:.2e} (hidden states), "
            f"{info['check']['max_abs_diff_logits']:.2e} (MLM logits) on {info['check']['sentences']} sentences")
