"""README.md of an exported model: where it comes from, what it was trained on, how it was
trained and measured, and the three lines that load it."""
import json
import os
from typing import Dict, List, Optional

from ..layout import RunDir
from ..fileio import read_json


def usage_lines(model_dir: str, masked: str) -> List[str]:
    """The three lines of transformers code that load the model and fill a mask."""
    return ["from transformers import pipeline",
            f"fill = pipeline(\"fill-mask\", model={json.dumps(model_dir)})",
            f"print(fill({json.dumps(masked, ensure_ascii=False)}))"]


def find_stages(checkpoint: str) -> Optional[Dict]:
    """stages.json of the run the checkpoint belongs to (its folder or the one above:
    trelm-stages writes RUN/stages.json and RUN/<stage>/checkpoint*.pt), if any."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    for d in (folder, os.path.dirname(folder)):
        path = RunDir(d).summary
        if os.path.isfile(path):
            record = read_json(path, "trelm-stages summary")
            if isinstance(record, dict):
                record["_path"] = path
                return record
    return None


def _yaml_list(values: List[str]) -> List[str]:
    return [f"- {v}" for v in values]


def _corpus_lines(prepare: Dict, corpus: Optional[Dict]) -> List[str]:
    out = []
    for s in (corpus or {}).get("sources") or []:
        extra = f", {s['pages']} pages" if s.get("pages") else ""
        lic = f", license {s['license']}" if s.get("license") else ""
        out.append(f"- Debian package `{s.get('package')}` ({s.get('kind')}{extra}{lic})")
    counts = prepare.get("counts") or {}
    pairs = counts.get("pairs") or {}
    if pairs:
        out.append(f"- parallel sentence pairs train / valid / test: {pairs.get('train')} / {pairs.get('valid')} / "
                   f"{pairs.get('test')}")
    for lang, splits in (counts.get("mono") or {}).items():
        if isinstance(splits, dict):
            out.append(f"- monolingual {lang} sentences train / valid / test: {splits.get('train')} / "
                       f"{splits.get('valid')} / {splits.get('test')}")
    v = prepare.get("vocab") or {}
    if v:
        out.append(f"- vocabulary: {v.get('vocab_size')} sentencepiece pieces ({v.get('model_type', 'unigram')}), "
                   f"{v.get('dict_symbols', '?')} fairseq symbols + `<mask>`; lower-cased: {v.get('lowercase')}"
                   + (f" ({v['lowercase_why']})" if v.get("lowercase_why") else ""))
    return out or ["- (no trelm-prepare record in the data directory)"]


def _stage_lines(stages: Optional[Dict]) -> List[str]:
    if not stages:
        return ["No trelm-stages record (stages.json) next to the checkpoint."]
    plan = stages.get("plan") or {}
    out = []
    if plan.get("budgets"):
        out.append(f"Stage budgets (updates): `{json.dumps(plan['budgets'], sort_keys=True)}`; learning rate "
                   f"{plan.get('lr')}, {plan.get('max_tokens')} tokens per batch, seed {plan.get('seed')}.")
        out.append("")
    out += ["| stage | name | updates | valid loss | seconds |", "|---|---|---|---|---|"]
    for r in stages.get("stages") or []:
        out.append(f"| {r.get('stage')} | {r.get('name')} | {r.get('updates') if r.get('updates') is not None else '-'}"
                   f" | {r.get('valid_loss') if r.get('valid_loss') is not None else '-'} | "
                   f"{(r.get('seconds') or 0):.0f} |")
    return out


def _fmt(entry) -> str:
    if isinstance(entry, dict) and "mean" in entry:
        runs = entry.get("runs") or []
        return f"{entry['mean']:.2f} ± {entry.get('std', 0):.2f}" if len(runs) > 1 else f"{entry['mean']:.2f}"
    return str(entry)


def _results_lines(results: Optional[Dict], source: str) -> List[str]:
    if not results:
        return ["Not given (`trelm-export --results results.json` adds the main job's measurements here)."]
    down = results.get("downstream") or {}
    out = [f"From {source}."]
    if down:
        names = {"uas": "UAS", "las": "LAS", "cls_target": "classification acc (target)",
                 "cls_zeroshot": "classification acc (zero-shot en→target)"}
        metrics = [k for k in names if any(k in d for d in down.values())]
        out += ["", "| model | " + " | ".join(names[k] for k in metrics) + " |",
                "|---|" + "---|" * len(metrics)]
        for model, d in down.items():
            out.append(f"| {model} | " + " | ".join(_fmt(d[k]) if k in d else "-" for k in metrics) + " |")
    ttq = results.get("time_to_quality") or {}
    if ttq.get("reached"):
        flops = f" ({ttq['flop_fraction']:.3f} of its training FLOPs)" if "flop_fraction" in ttq else ""
        out += ["", f"Time to quality: TreLM reaches from-scratch's final target MLM loss after "
                    f"{ttq.get('fraction', 0):.3f} of its updates{flops}."]
    if not down and not ttq:
        out += ["", "```json", json.dumps(results, indent=1, sort_keys=True, default=str)[:4000], "```"]
    return out


def model_card(info: Dict) -> str:
    """README.md from the export record ``info`` (see export.export_model)."""
    prepare, lang = info.get("prepare") or {}, info["lang"]
    langs = prepare.get("langs") or [lang]
    lines = [
        "---",
        "language:", *_yaml_list(sorted(set(langs) | {lang})),
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "tags:", *_yaml_list(["trelm", "fairseq", info["layout"]]),
        "---",
        "",
        f"# TreLM encoder for `{lang}`",
        "",
        f"A {info['config']['num_hidden_layers']}-layer, {info['config']['hidden_size']}-wide "
        f"{'RoBERTa' if info['layout'] == 'roberta' else 'BERT'} encoder with its masked-LM head, transferred from "
        f"an English source model to `{lang}` with the TreLM method (trelm-fairseq), exported from the fairseq "
        f"checkpoint `{info['checkpoint']}` by `trelm-export`.",
        "",
        "## Use",
        "",
        "```python",
        *usage_lines(".", info["example"]["masked"]),
        "```",
        "",
        "or `AutoTokenizer` + `AutoModel` / `AutoModelForMaskedLM` (no `trust_remote_code`). The tokenizer applies "
        "trelm's own normalisation (whitespace collapsed"
        + (", lower-cased with the language's rules" if info["lowercase"] else "")
        + ", then sentencepiece's) and adds `<s> ... </s>` as trelm's tasks do.",
        "",
        *_folded_lines(info, lang),
        "## Source model and languages",
        "",
        f"- source model: `{prepare.get('source_model') or 'unknown'}`"
        + (f" (its config.json names `{info['source_name']}`)" if info.get("source_name") else ""),
        f"- languages of the transfer: {', '.join(langs)}; this export: `{lang}`",
        "",
        "## Data",
        "",
        *_corpus_lines(prepare, info.get("corpus")),
        "",
        "## Training",
        "",
        *_stage_lines(info.get("stages")),
        "",
        "## Measured",
        "",
        *_results_lines(info.get("results"), info.get("results_source") or "the main job's results"),
        "",
    ]
    lines += _check_lines(info, lang)
    return "\n".join(lines)

def _folded_lines(info: Dict, lang: str) -> List[str]:
    """What the export folded into stock BERT / RoBERTa parts."""
    return [
        "## What was folded in",
        "",
        f"- the `{lang}` row (id {info['lang_id']}) of the language embedding: the token-type table "
        "(type_vocab_size 1), so inputs need no language id;",
        (f"- the TRILayer (after layer {info['tri_layer_position']}): one more encoder layer at that position, as "
         "trelm runs it on monolingual input;" if info.get("tri_layer_position") is not None else
         "- no TRILayer;"),
        ("- fairseq's learned positions (padding offset 2) as they are: RoBERTa position ids;"
         if info["layout"] == "roberta" else
         "- fairseq's learned positions shifted by its padding offset (2) to BERT's position ids from 0 "
         "(exact for right-padded input);"),
        "- the MLM head (dense, activation, LayerNorm, output weight tied to the word embeddings + bias). No "
        "pooler: `AutoModel`'s `pooler_output` is newly initialised, use the hidden states.",
        "",
    ]


def _check_lines(info: Dict, lang: str) -> List[str]:
    """The export check's figures (and the example's top predictions), if it ran."""
    check = info.get("check")
    if not check:
        return []
    lines = [
        f"Export check (`trelm-export`, {check['sentences']} `{lang}` sentences of the data's valid split, one "
        f"right-padded batch): max abs difference to the fairseq model {check['max_abs_diff_hidden']:.2e} "
        f"(final hidden states), {check['max_abs_diff_logits']:.2e} (MLM logits); tokenizer ids equal to trelm's "
        f"encoding on all of them.",
        "",
    ]
    if check.get("fill_mask"):
        lines += [f"`fill(\"{info['example']['masked']}\")` top predictions: "
                  + ", ".join(f"`{p['token_str']}` ({p['score']:.3f})" for p in check["fill_mask"]), ""]
    return lines

