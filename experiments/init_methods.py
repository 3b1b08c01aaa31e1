#!/usr/bin/env python
"""The alignment init against the least-squares map, trained (docs/initialisations.md).

Two arms, each the main job's TreLM and continued-MLM pre-training at the demo budget on one
prepared data directory, 3 pre-training seeds (matched: seed k of both arms shares the data
order and every other setting), different only in ``DATA/init/model.pt``:

    map        today's default (trelm-prepare's least-squares map, zero output bias): the
               data directory of a finished main-job work dir (--base-work), whose models,
               probes and fine-tunes are re-used where they exist
    alignment  trelm-map-embeddings --method alignment --output-bias unigram on the same data
               directory (a copy of it by symbolic links, with its own init/)

Per seed and model (TreLM, continued MLM at --baseline-updates for every seed, the FLOP match
of the main job): target MLM (bits, mono/T/valid), bitext retrieval P@1 at the lower-half
output and the top (CSLS, valid pairs; the test pairs scored once beside them) and the language-ID
probe; the frozen-feature classification probes (target and zero-shot, top layer, on the test
paragraphs); one parsing fine-tune at the main job's default depth (TreLM without its TRILayer),
LAS / UAS on valid (the run's kept checkpoint) and test.

The rule, fixed before the runs: the alignment init becomes the default if TreLM's final target
MLM on valid is lower than the map's by a paired 95% interval that excludes 0, and TreLM's
final valid retrieval (lower half) is not lower by such an interval.  Everything else is
reported, paired over seeds (mean difference, 95% t interval), Holm over the report's table.

    python experiments/init_methods.py --base-work runs/finetune-depth --work runs/init-methods \\
        --out results/init-methods
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

from trelm_fairseq import fileio
from trelm_fairseq.comparison.paired import holm, paired_over_seeds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_depth import best_valid  # noqa: E402  (the same valid figure as that study's)

ARMS = ("map", "alignment")
MODELS = ("trelm", "mlm_continued")
ALIGNMENT_ARGS = ["--method", "alignment", "--output-bias", "unigram"]
# metric -> (title, better when larger)
METRIC_TITLES = {
    "target_mlm_bits": ("target MLM, bits (valid)", False), "p1_lower": ("retrieval P@1 lower (valid)", True),
    "p1_top": ("retrieval P@1 top (valid)", True), "langid": ("language-ID probe (valid)", False),
    "test_p1_lower": ("retrieval P@1 lower (test)", True), "test_p1_top": ("retrieval P@1 top (test)", True),
    "probe_zeroshot": ("zero-shot probe, % (test)", True), "probe_target": ("target probe, % (test)", True),
    "las_valid": ("LAS (valid)", True), "las": ("LAS (test)", True), "uas": ("UAS (test)", True),
}


def say(msg: str) -> None:
    print(f"[init-methods {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def arm_data(work: str, base_data: str, lang: str) -> str:
    """work/alignment/data: base_data's files by symbolic links, init/ of its own (written once)."""
    data = os.path.join(work, "alignment", "data")
    init = os.path.join(data, "init", "model.pt")
    if os.path.isfile(init):
        return data
    os.makedirs(os.path.dirname(init), exist_ok=True)
    for name in os.listdir(base_data):
        if name not in ("init", ".prepare", ".trelm.lock") and not os.path.lexists(os.path.join(data, name)):
            os.symlink(os.path.join(base_data, name), os.path.join(data, name))
    from trelm_fairseq.layout import DataDir, text_path, tok_path
    from trelm_fairseq.preprocess.mapping_options import main as map_main

    w = DataDir(base_data).work
    source = os.path.join(base_data, "source-head" if os.path.isdir(os.path.join(base_data, "source-head")) else "source")
    argv = ["--source-model", source, "--data", data, "--out", init, "--report-json", os.path.join(work, "alignment", "init.json"),
            "--text", tok_path(w, "mono", "train", "en"), tok_path(w, "mono", "train", lang),
            "--align-text", text_path(w, "para", "train", "en"), tok_path(w, "para", "train", lang),
            tok_path(w, "para", "train", "en"), "--target-text", tok_path(w, "mono", "train", lang), *ALIGNMENT_ARGS]
    say("alignment init: trelm-map-embeddings " + " ".join(argv))
    map_main(argv)
    return data


# The init table: each variant written by trelm-map-embeddings from the same fastText vectors
# (trained once, one thread) and probed untrained.  name -> (options, whether to pass the English
# side's pieces to --align-text too)
INIT_VARIANTS = {
    "map": ([], None),
    "map+unigram": (["--output-bias", "unigram"], None),
    "alignment (target side)": (["--method", "alignment"], False),
    "alignment": (["--method", "alignment"], True),
    "alignment+unigram": (ALIGNMENT_ARGS, True),
}


def init_table(base_data: str, work: str, lang: str) -> List[Dict]:
    """One row per INIT_VARIANTS entry: the command's held-out P@1 and counts, and the probes
    of the untrained checkpoint on valid (target MLM, retrieval, language ID)."""
    from trelm_fairseq.layout import DataDir, text_path, tok_path
    from trelm_fairseq.preprocess.mapping_options import main as map_main
    from trelm_fairseq.probes import probe_checkpoint

    w = DataDir(base_data).work
    source = os.path.join(base_data, "source-head" if os.path.isdir(os.path.join(base_data, "source-head")) else "source")
    vectors = os.path.join(work, "init-table", "fasttext.npz")
    common = ["--source-model", source, "--data", base_data, "--seed", "1", "--quiet",
              "--text", tok_path(w, "mono", "train", "en"), tok_path(w, "mono", "train", lang),
              "--target-text", tok_path(w, "mono", "train", lang)]
    rows = []
    for name, (options, english) in INIT_VARIANTS.items():
        folder = os.path.join(work, "init-table", name.replace(" ", "_").replace("(", "").replace(")", ""))
        out = os.path.join(folder, "model.pt")
        argv = common + ["--out", out, *options]
        argv += ["--load-vectors", vectors] if os.path.isfile(vectors) else ["--deterministic", "--save-vectors", vectors]
        if english is not None:
            argv += ["--align-text", text_path(w, "para", "train", "en"), tok_path(w, "para", "train", lang)]
            argv += [tok_path(w, "para", "train", "en")] if english else []
        say(f"init table: {name}")
        report = fileio.cached_json(os.path.join(folder, "report.json"), lambda: map_main(argv), None, "init report")
        r = fileio.cached_json_of_file(os.path.join(folder, "probe.valid.json"), out,
                                       lambda: probe_checkpoint(out, base_data, ["en", lang], split="valid",
                                                                max_pairs=1000, tokens_per_sample=128), "probe record")
        method = report["method"]
        p1 = report["precision_at_1"][method]
        rows.append({"variant": name, "heldout_p1_csls": p1["csls"], "heldout_p1_nn": p1["nn"], "heldout_n": p1["n"],
                     "heldout_p1_csls_with_links": report["mapping"][method].get("csls_with_links"),
                     "heldout_with_links": report["mapping"][method].get("heldout_with_links"),
                     "aligned": (report.get("alignment") or {}).get("aligned"),
                     "map_fallback": (report.get("alignment") or {}).get("map_fallback"),
                     "output_bias": report["output_bias"], "target_mlm_bits": r["target_mlm_bits"],
                     "p1_lower": r["lower"]["p1_mean_csls"], "p1_top": r["top"]["p1_mean_csls"],
                     "langid": r["lower"]["langid_acc"]})
    return rows


def init_table_lines(rows: List[Dict]) -> List[str]:
    def f(x, digits=3):
        return "–" if x is None else f"{x:.{digits}f}"

    md = ["| init | held-out P@1 CSLS / NN (n) | with links: P@1 CSLS (n) | new rows aligned / map | target MLM bits | "
          "P@1 lower | P@1 top | lang-ID |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        linked = "–" if r["heldout_with_links"] is None else \
            f"{f(r['heldout_p1_csls_with_links'])} ({r['heldout_with_links']})"
        counts = "–" if r["aligned"] is None else f"{r['aligned']} / {r['map_fallback']}"
        md.append(f"| {r['variant']} | {f(r['heldout_p1_csls'])} / {f(r['heldout_p1_nn'])} ({r['heldout_n']}) | {linked} "
                  f"| {counts} | {f(r['target_mlm_bits'], 2)} | {f(r['p1_lower'])} | {f(r['p1_top'])} | {f(r['langid'])} |")
    return md


def run_arm(arm: str, data: str, work: str, lang: str, seeds: int, baseline_updates: int, cls_dir: str) -> List[Dict]:
    """Pre-train, probe and fine-tune one arm; its rows."""
    from trelm_fairseq.comparison.budgets import Budgets
    from trelm_fairseq.comparison.downstream import _in_parallel, prepare_parsing_data
    from trelm_fairseq.comparison.finetune import finetune_parser
    from trelm_fairseq.comparison.job import pretrain_seed_work
    from trelm_fairseq.comparison.pretraining import final_checkpoints, model_plans, pretrain
    from trelm_fairseq.comparison.surgery import finetune_checkpoint
    from trelm_fairseq.layout import DataDir, StageDir
    from trelm_fairseq.probes import module_probe, probe_checkpoint

    budgets = Budgets()
    init = DataDir(data).init_model
    parse_data = prepare_parsing_data(data, work, lang)
    rows, todo = [], []
    for p in range(1, seeds + 1):
        root = pretrain_seed_work(work, p)
        plans = model_plans(data, root, lang, budgets, p)
        plans["mlm_continued"].updates["1"] = baseline_updates
        say(f"{arm} seed {p}: pre-training TreLM and continued MLM ({baseline_updates} updates) under {root}")
        pretrain({m: plans[m] for m in MODELS}, {})
        checkpoints = final_checkpoints(plans, init)
        for model in MODELS:
            ckpt = checkpoints[model]
            tps = plans["trelm"].sample_tokens()
            valid = fileio.cached_json_of_file(
                os.path.join(root, "probes", f"init-study-{model}-final.valid.json"), ckpt,
                lambda: probe_checkpoint(ckpt, data, ["en", lang], split="valid", max_pairs=1000,
                                         tokens_per_sample=tps), "probe record",
                valid=lambda r: r.get("valid_sample", 0) == 0)
            test = fileio.cached_json_of_file(
                os.path.join(root, "probes", f"init-study-{model}-final.test.json"), ckpt,
                lambda: probe_checkpoint(ckpt, data, ["en", lang], split="test", max_pairs=1000,
                                         tokens_per_sample=tps, target_mlm=False), "probe record")
            cls = fileio.cached_json_of_file(os.path.join(root, "classification", "probes", f"{model}.json"), ckpt,
                                             lambda: module_probe(ckpt, data, cls_dir, budgets.tokens_per_sample),
                                             "classification probe record")
            values = {"target_mlm_bits": valid["target_mlm_bits"], "p1_lower": valid["lower"]["p1_mean_csls"],
                      "p1_top": valid["top"]["p1_mean_csls"], "langid": valid["lower"]["langid_acc"],
                      "test_p1_lower": test["lower"]["p1_mean_csls"], "test_p1_top": test["top"]["p1_mean_csls"],
                      "probe_zeroshot": 100 * cls["zeroshot"]["top"], "probe_target": 100 * cls["target"]["top"]}
            rows += [{"arm": arm, "seed": p, "model": model, "metric": k, "value": v} for k, v in values.items()]
            if parse_data is None:
                continue
            # the main job's default depth: TreLM fine-tunes without its TRILayer
            ft_ckpt, tag = finetune_checkpoint(ckpt, data, os.path.join(root, "finetune-inits"), model,
                                               "without_tri_layer")
            folder = os.path.join(root, "parsing", f"{model}-{tag}" if tag else model, f"seed{p}")
            todo.append((arm, p, model, folder,
                         lambda c=ft_ckpt, f=folder, p=p: finetune_parser(parse_data, c, f, budgets, p)))
    say(f"{arm}: {len(todo)} parsing fine-tunes, 2 at a time" if todo else f"{arm}: no treebank for {lang}")
    results = _in_parallel([t[-1] for t in todo], 2)
    for (arm_, p, model, folder, _), m in zip(todo, results):
        las_valid = best_valid(StageDir(folder).train_log, "las", "las")
        rows += [{"arm": arm_, "seed": p, "model": model, "metric": k, "value": v}
                 for k, v in (("las", m["las"]), ("uas", m["uas"]), ("las_valid", las_valid)) if v is not None]
    return rows


def _values(rows: List[Dict], arm: str, model: str, metric: str) -> Dict[int, float]:
    return {r["seed"]: r["value"] for r in rows if (r["arm"], r["model"], r["metric"]) == (arm, model, metric)}


def verdict(rows: List[Dict]) -> str:
    """The rule of the docstring, on TreLM's valid figures."""
    mlm = paired_over_seeds(_values(rows, "alignment", "trelm", "target_mlm_bits"),
                            _values(rows, "map", "trelm", "target_mlm_bits"))
    ret = paired_over_seeds(_values(rows, "alignment", "trelm", "p1_lower"), _values(rows, "map", "trelm", "p1_lower"))
    if not mlm or not ret:
        return "Not enough matched seeds for the rule."
    better, no_worse = mlm["hi"] < 0, not ret["hi"] < 0
    text = (f"TreLM's final target MLM (valid), alignment − map: {mlm['mean']:+.3f} bits [{mlm['lo']:+.3f}, "
            f"{mlm['hi']:+.3f}]; retrieval P@1 lower (valid): {ret['mean']:+.3f} [{ret['lo']:+.3f}, {ret['hi']:+.3f}].")
    return text + (" By the rule the alignment init becomes the default." if better and no_worse
                   else " By the rule the map stays the default.")


def classification_dir(base: str, lang: str) -> str:
    """base/classification, the main job's labelled help paragraphs (written here if missing)."""
    from trelm_fairseq import classification as cls
    from trelm_fairseq.comparison.budgets import Budgets

    cls_dir = os.path.join(base, "classification")
    if not os.path.isdir(os.path.join(cls_dir, "target")):
        corpus = os.path.join(base, "data", "corpus")
        cls.prepare_classification(corpus, os.path.join(base, "data"), cls_dir, "en", lang,
                                   max_train=Budgets.max_cls_train, log=say)
    return cls_dir


def report_from_files(study: Dict, init_rows: List[Dict], rows: Optional[List[Dict]] = None) -> str:
    """report.md from the committed files (scripts/figures.py regenerates it; no rows: untrained only)."""
    return report(rows or [], study.get("alignment_init"), study.get("lang", "tr"), init_rows)


def report(rows: List[Dict], init_info: Optional[Dict], lang: str, init_rows: Optional[List[Dict]] = None) -> str:
    seeds = sorted({r["seed"] for r in rows})
    md = ["# The alignment init against the least-squares map", "",
          "Generated by `experiments/init_methods.py` from `rows.json` and `init-rows.json` (this folder); the rule "
          f"is in the script's docstring and docs/initialisations.md. en→{lang}.", ""]
    if init_rows:
        md += ["## The inits, untrained", "",
               "Every variant from the same fastText vectors (one thread, seed 1); held-out P@1: the shared tokens "
               "kept out of the map's seed pairs, retrieved among the source rows (\"with links\": those of them "
               "the alignment covers); the probes on the valid split (1,000 pairs, sentences cut to 128 tokens).", ""]
        md += init_table_lines(init_rows) + [""]
    if not rows:
        return "\n".join(md)
    md += [f"## Trained: demo budget, pre-training seeds {seeds}", ""]
    if init_info and init_info.get("alignment"):
        a = init_info["alignment"]
        md += [f"Alignment init: {a.get('aligned')} new tokens from their links, {a.get('map_fallback')} keep the "
               f"map's row; output bias {init_info.get('output_bias')}.", ""]
    md += ["## The rule (valid decides)", "", verdict(rows), "",
           "## Every figure, paired over seeds (alignment − map)", "",
           "Mean over seeds per arm; the paired difference with its 95% t interval; Holm over this table's "
           "comparisons. Test figures are reported, they decide nothing.", "",
           "| model | metric | map | alignment | difference | 95% interval | Holm p |", "|---|---|---|---|---|---|---|"]
    lines = []
    for model in MODELS:
        for metric, (title, _) in METRIC_TITLES.items():
            a, b = _values(rows, "alignment", model, metric), _values(rows, "map", model, metric)
            d = paired_over_seeds(a, b)
            if d:
                lines.append((model, title, sum(b.values()) / len(b), sum(a.values()) / len(a), d))
    for (model, title, mb, ma, d), p in zip(lines, holm([x[-1]["p"] for x in lines]) if lines else []):
        name = "TreLM" if model == "trelm" else "continued MLM"
        md.append(f"| {name} | {title} | {mb:.3f} | {ma:.3f} | {d['mean']:+.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] "
                  f"| {p:.3f} |")
    md += ["", "TreLM fine-tunes for parsing without its TRILayer (the main job's default depth); the classification "
           "probes are frozen-feature logistic regressions (top layer) on the test paragraphs.", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-work", required=True,
                   help="a main-job work directory (trelm-demo --work, or one with only data/ from trelm-prepare) "
                        "whose data and models are the map arm (models missing there are trained)")
    p.add_argument("--work", required=True, help="this study's work directory (the alignment arm's models)")
    p.add_argument("--out", required=True, help="where rows.json and report.md go")
    p.add_argument("--lang", default="tr")
    p.add_argument("--pretrain-seeds", type=int, default=3)
    p.add_argument("--baseline-updates", type=int, default=161,
                   help="continued MLM's updates for every seed (default: %(default)s, the demo's FLOP match)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--init-only", action="store_true", help="the init table only (no training)")
    args = p.parse_args(argv)
    base, work, out = (os.path.abspath(x) for x in (args.base_work, args.work, args.out))
    rows_path = os.path.join(out, "rows.json")
    info_path = os.path.join(work, "alignment", "init.json")
    init_rows_path = os.path.join(out, "init-rows.json")
    if not args.report_only:
        os.makedirs(out, exist_ok=True)
        fileio.write_json(init_rows_path, init_table(os.path.join(base, "data"), work, args.lang))
    if not args.report_only and not args.init_only:
        cls_dir = classification_dir(base, args.lang)
        rows = run_arm("map", os.path.join(base, "data"), base, args.lang, args.pretrain_seeds, args.baseline_updates,
                       cls_dir)
        data = arm_data(work, os.path.join(base, "data"), args.lang)
        rows += run_arm("alignment", data, os.path.join(work, "alignment"), args.lang, args.pretrain_seeds,
                        args.baseline_updates, cls_dir)
        fileio.write_json(rows_path, rows)
    study_path = os.path.join(out, "study.json")
    if not args.report_only or not os.path.isfile(study_path):
        info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
        fileio.write_json(study_path, {"lang": args.lang, "alignment_init": {
            k: info.get(k) for k in ("alignment", "output_bias", "precision_at_1", "copied", "mapped", "random")}
            if info else None})
    load = lambda path, empty: json.load(open(path)) if os.path.isfile(path) else empty  # noqa: E731
    fileio.write_text(os.path.join(out, "report.md"),
                      report_from_files(load(study_path, {}), load(init_rows_path, []), load(rows_path, [])))
    say(f"{len(rows)} rows; report in {os.path.join(out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
