"""The comparison's report: <results>/results.json, results.md (the table, time to
quality, the pre-training stages, wall-clock) and mlm_loss.png."""
import json
import os
import statistics
from typing import Dict, List, Optional

from ..fileio import atomic_output, write_json, write_text
from .budgets import COMBINED, MODEL_TITLES, MODELS


def mean_std(values: List[float]) -> Dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


def _fmt(entry: Optional[Dict], digits: int = 2) -> str:
    """A mean_std entry: 'mean ± std' over several runs, the value of one, '-' for none."""
    if not entry:
        return "-"
    mean, std = f"{entry['mean']:.{digits}f}", f"{entry['std']:.{digits}f}"
    return f"{mean} ± {std}" if len(entry["runs"]) > 1 else mean


def majority_note(counts: Optional[Dict]) -> str:
    """'; majority class X% of N paragraphs' for the target-language test split, if known."""
    test = ((counts or {}).get("target") or {}).get("test") or {}
    labels = test.get("labels") or {}
    if not labels:
        return ""
    n = sum(labels.values())
    label, top = max(labels.items(), key=lambda kv: kv[1])
    return f"; majority class ({label}) {100.0 * top / n:.1f}% of {n} test paragraphs"


def vocab_line(prepare: Optional[Dict]) -> str:
    """The report's sentence on the vocabulary: its size and how that size was chosen."""
    v = (prepare or {}).get("vocab") or {}
    if "vocab_size_rule" not in v:  # no prepare.json, or one written before sizes were recorded
        return f"Vocabulary: --vocab-size {v['vocab_size']}." if "vocab_size" in v else ""
    return (f"Vocabulary: {v['vocab_size']} sentencepiece pieces ({v.get('dict_symbols', '?')} fairseq symbols); "
            f"{v['vocab_size_rule']}.")


def source_head_line(prepare: Optional[Dict]) -> str:
    """The report's sentence on the source model's MLM head: fitted by trelm-prepare (its figures
    and cost, which are the source model's, not any compared model's) or not."""
    h = (prepare or {}).get("source_head")
    if not h:
        return ""
    bits, flops = h["english_mlm_bits"], h.get("flops") or {}
    tflop = sum(flops.values()) / 1e12
    cost = (f"reused from the cache, fitted earlier on the same source model and English text"
            if h.get("reused_from") else f"{h.get('seconds', 0):.0f} s")
    return (f"Source MLM head: fitted on English by trelm-prepare (encoder frozen; held-out English MLM "
            f"{bits['before']:.2f} -> {bits['after']:.2f} bits per masked token, {cost}, "
            f"{tflop:.1f} TFLOP); every model that starts from the source starts from this head, and its cost "
            f"is the source model's, counted in no model's budget.")


def equal_compute_line(report: Dict) -> str:
    """The report's sentence on what the pre-trained models got equal amounts of."""
    n = report["pretrain_budget_updates"]
    if report.get("equal_compute") != "flops":
        return f"All pre-trained models get {n} updates (equal compute: updates; their FLOPs differ, see the table)."
    base = report.get("baseline_updates") or {}
    return (f"Equal training FLOPs (`--equal-compute flops`, by the FLOP ledger: what TreLM's runs logged): "
            f"TreLM {n} updates over its stages, from scratch {base.get('scratch', '?')}, "
            f"MLM continued {base.get('mlm_continued', '?')} (measured FLOPs in the table).")


def results_table(report: Dict) -> str:
    rows = ["| model | UAS | LAS | cls acc (target) | cls acc (zero-shot en→T) | cls probe (target) | "
            "cls probe (zero-shot) | pre-training updates | pre-training tokens | pre-training TFLOP | pre-training s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        d, p = report["downstream"].get(m, {}), report["pretraining"].get(m, {})
        rows.append(f"| {MODEL_TITLES[m]} | {_fmt(d.get('uas'))} | {_fmt(d.get('las'))} | "
                    f"{_fmt(d.get('cls_target'))} | {_fmt(d.get('cls_zeroshot'))} | "
                    f"{_fmt(d.get('probe_target'))} | {_fmt(d.get('probe_zeroshot'))} | {p.get('updates', 0)} | "
                    f"{_tokens(p.get('tokens') if p else 0)} | {_tflop(p.get('gflop') if p else 0.0)} | "
                    f"{p.get('seconds', 0):.0f} |")
    return "\n".join(rows)


DOWNSTREAM_METRICS = (("uas", "UAS"), ("las", "LAS"), ("cls_target", "cls acc (target)"),
                      ("cls_zeroshot", "cls acc (zero-shot)"))


def depth_lines(report: Dict) -> List[str]:
    """The depth and the fine-tuning FLOPs of every model (``--finetune-depth``)."""
    from .surgery import FINETUNE_DEPTHS

    depth = report["budgets"].get("finetune_depth", "as_pretrained")
    rows = [(m, report["downstream"][m]) for m in MODELS
            if "finetune_layers" in report["downstream"].get(m, {})]
    if not rows:
        return []
    return [f"Fine-tuning depth (`--finetune-depth {depth}`): {FINETUNE_DEPTHS[depth]}. The encoder's training "
            "FLOPs per fine-tuning token (forward + backward, sequences of "
            f"{report['budgets'].get('tokens_per_sample')} tokens, the task heads not counted):", "",
            "| model | fine-tuned layers | MFLOP per token |", "|---|---|---|",
            *[f"| {MODEL_TITLES[m]} | {d['finetune_layers']['mean']:.0f} | {d['finetune_mflop_per_token']['mean']:.1f} |"
              for m, d in rows], ""]


def paired_downstream_lines(report: Dict) -> List[str]:
    """TreLM against each baseline downstream, paired over the runs that share their seeds (the
    k-th fine-tune of every model has the same pre-training and fine-tuning seed): mean
    difference, 95% t interval, Holm over every comparison of the table; with one run per
    model there is no interval, and the report says so."""
    from .paired import holm, paired_difference

    runs = {m: report["downstream"].get(m, {}) for m in MODELS}
    rows = []
    for base in (m for m in MODELS if m != "trelm"):
        for key, title in DOWNSTREAM_METRICS:
            a, b = runs["trelm"].get(key, {}).get("runs"), runs[base].get(key, {}).get("runs")
            if a and b and len(a) == len(b):
                rows.append((base, title, a, b))
    if not rows:
        return []
    n = len(rows[0][2])
    if n < 2:
        return [f"Downstream, TreLM against the baselines: one fine-tune per model, so no interval (a verdict needs "
                f"matched seeds: `trelm-demo --pretrain-seeds 3`); the table's figures are single runs.", ""]
    diffs = [(base, title, paired_difference(a, b)) for base, title, a, b in rows]
    adjusted = holm([d["p"] for _, _, d in diffs])
    return [f"Downstream, TreLM − each baseline, paired over the {n} runs that share their pre-training and "
            f"fine-tuning seeds (mean difference, 95% t interval; Holm-adjusted p over the {len(diffs)} "
            "comparisons; test split):", "",
            "| comparison | metric | difference | 95% interval | Holm p |", "|---|---|---|---|---|",
            *[f"| TreLM − {MODEL_TITLES[base].split(' (')[0]} | {title} | {d['mean']:+.2f} | "
              f"[{d['lo']:+.2f}, {d['hi']:+.2f}] | {p:.3f} |" for (base, title, d), p in zip(diffs, adjusted)], ""]


COMBINED_METRICS = (("probe_zeroshot", "cls probe (zero-shot)"), ("probe_target", "cls probe (target)"),
                    ("cls_zeroshot", "cls acc (zero-shot)"))


def combined_lines(report: Dict) -> List[str]:
    """TreLM's combined checkpoint (before stage 4) beside its final one, where the alignment
    should show: the classification probes and the zero-shot fine-tune; paired over the runs that
    share their seeds when there are 2+ (95% t interval), else the single runs side by side."""
    from .paired import paired_difference

    combined, final = report["downstream"].get(COMBINED) or {}, report["downstream"].get("trelm") or {}
    rows = [(title, combined[k]["runs"], final[k]["runs"]) for k, title in COMBINED_METRICS
            if k in combined and k in final and len(combined[k]["runs"]) == len(final[k]["runs"])]
    if not rows:
        return []
    lines = []
    for title, a, b in rows:
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        diff = "–"
        if len(a) >= 2:
            d = paired_difference(a, b)
            diff = f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
        lines.append(f"| {title} | {mean(a):.2f} | {mean(b):.2f} | {diff} | {len(a)} |")
    return ["## What stage 4 keeps", "",
            "TreLM's combined checkpoint (after stage 3, before stage 4) against its final one on the test "
            "paragraphs: the frozen-feature probes (one per pre-training seed) and the zero-shot fine-tune (English "
            "training, every fine-tuning seed), fine-tuned at the same depth; the difference paired over the runs "
            "that share their seeds (95% t interval; '–': one run, no interval).", "",
            "| metric | combined | final | combined − final | runs |", "|---|---|---|---|---|", *lines, ""]


def _ttq_line(ttq: Dict) -> str:
    if ttq.get("reached"):
        flops = (f" In training FLOPs: {ttq['trelm_gflop'] / 1e3:.1f} TFLOP = {ttq['flop_fraction']:.3f} of "
                 f"from-scratch's {ttq['scratch_gflop'] / 1e3:.1f} TFLOP." if "flop_fraction" in ttq else "")
        return (f"TreLM reaches from-scratch's final target MLM loss ({ttq['scratch_final_loss']:.3f}) after "
                f"{ttq['trelm_updates']} updates = {ttq['fraction']:.3f} of from-scratch's {ttq['scratch_updates']}."
                + flops)
    return (f"TreLM did not reach from-scratch's final target MLM loss ({ttq.get('scratch_final_loss')}); "
            f"its best was {ttq.get('trelm_best_loss')}.")


def _seeds_line(report: Dict) -> str:
    pre = report.get("pretrain_seeds") or [1]
    if len(pre) == 1:
        return f"Seeds: {report['seeds']} (fine-tuning; one pre-training run, seed {pre[0]})."
    return (f"Pre-training seeds {pre}, fine-tuning seeds {report['seeds']}: the downstream figures are mean ± std "
            f"over every pre-trained model's fine-tunes (the mapped init's over its fine-tunes only: it is not "
            f"pre-trained); the pre-training columns, the curves and the stage table are pre-training seed {pre[0]}'s.")


def _ttq_seeds_lines(report: Dict) -> List[str]:
    """Time to quality of every pre-training seed, when there are several."""
    runs = report.get("pretrain_seed_runs") or []
    if len(runs) < 2:
        return []
    lines = [""]
    for key, unit in (("fraction", "updates"), ("flop_fraction", "training FLOPs")):
        got = [r["time_to_quality"].get(key) for r in runs]
        if key == "flop_fraction" and all(f is None for f in got):
            continue  # runs that logged no FLOPs
        text = ", ".join(f"seed {r['seed']} {'-' if f is None else f'{f:.3f}'}" for r, f in zip(runs, got))
        reached = [f for f in got if f is not None]
        if len(reached) == len(got):
            text += f" (mean ± std {_fmt(mean_std(reached), 3)})"
        lines.append(f"Over the {len(runs)} pre-training seeds, as a fraction of from-scratch's {unit}: {text}; "
                     "'-': not reached.")
    return lines


def _tokens(n: Optional[int]) -> str:
    """Tokens trained on (fairseq's wpb x updates), '-' when not logged."""
    return "-" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}")


def _tflop(gflop: Optional[float]) -> str:
    """Training FLOPs (the FLOP ledger's, logged by trelm_loss) in TFLOP, '-' when not logged."""
    return "-" if gflop is None else f"{gflop / 1e3:.1f}"


def _stage_rows(pretraining: Dict) -> List[str]:
    return [f"| {m} | {r['stage']} {r['name']} | {r.get('updates')} | "
            f"{r.get('valid_loss') if r.get('valid_loss') is not None else '-'} | "
            f"{_tflop(r.get('gflop'))} | {(r.get('seconds') or 0):.0f} |"
            for m, p in pretraining.items() for r in p["stages"]]


PROBE_METRICS = (("target_mlm_bits", lambda r: r["target_mlm_bits"]),
                 ("p1_lower", lambda r: r["lower"]["p1_mean_csls"]),
                 ("p1_top", lambda r: r["top"]["p1_mean_csls"]),
                 ("langid", lambda r: r["lower"]["langid_acc"]))


def probe_summary(report: Dict) -> List[Dict]:
    """Per probed point (model, point, updates): each probe's mean, std and runs over the
    pre-training seeds (one run without ``pretrain_seed_runs``)."""
    seed_runs = [r["probes"] for r in report.get("pretrain_seed_runs") or []] or [report.get("probes") or []]
    out = []
    for i, first in enumerate(seed_runs[0]):
        same = [rows[i] for rows in seed_runs if i < len(rows)]
        out.append(dict({k: first[k] for k in ("model", "point", "updates", "pairs")}, split=first.get("split", "test"),
                        **{name: mean_std([get(r) for r in same]) for name, get in PROBE_METRICS}))
    return out


def _probe_lines(report: Dict) -> List[str]:
    """The section on the probes that need no fine-tuning (comparison/alignment.py)."""
    summary = probe_summary(report)
    if not summary:
        return []
    n, seeds = summary[0]["pairs"], len(summary[0]["p1_top"]["runs"])
    split = summary[0]["split"]
    rows = [f"| {MODEL_TITLES[r['model']]} | {r['point']} | {r['updates']} | "
            + " | ".join(_fmt(r[name], 3) for name, _ in PROBE_METRICS) + " |" for r in summary]
    return ["## Cross-lingual alignment, without fine-tuning", "",
            f"Bitext retrieval P@1: each of the {n} held-out {split} pairs' sentence is looked up among the other "
            f"language's {n} (mean-pooled states, cosine with CSLS, mean of en→T and T→en; chance {1 / n:.3f}), "
            "at the lower half's output and at the last layer. Language ID: held-out accuracy of a logistic "
            "regression telling the two languages apart from lower-half states (0.5: indistinguishable). "
            "Target MLM: bits per masked token on the target valid split, the same sentences for every model."
            + (f" Mean ± std over {seeds} pre-training seeds." if seeds > 1 else ""),
            "",
            "| model | point | updates | target MLM (bits) | P@1 lower | P@1 top | language ID |",
            "|---|---|---|---|---|---|---|", *rows, "", *_test_probe_lines(report)]


def _test_probe_lines(report: Dict) -> List[str]:
    """The final models' retrieval on the test pairs: scored once, after every choice was made
    on valid (older reports probed test only and have no such rows)."""
    seed_runs = [r["probes"] for r in report.get("pretrain_seed_runs") or []] or [report.get("probes") or []]
    finals = [r for r in seed_runs[0] if r.get("test")]
    if not finals:
        return []
    lines = []
    for first in finals:
        same = [r for rows in seed_runs for r in rows if r.get("test") and r["model"] == first["model"]]
        cells = [mean_std([r["test"][where]["p1_mean_csls"] for r in same]) for where in ("lower", "top")]
        cells.append(mean_std([r["test"]["lower"]["langid_acc"] for r in same]))
        lines.append(f"| {MODEL_TITLES[first['model']]} | " + " | ".join(_fmt(c, 3) for c in cells) + " |")
    n = finals[0]["test"]["pairs"]
    return [f"The final models on the {n} test pairs (scored once; nothing above was chosen on them):", "",
            "| model | P@1 lower | P@1 top | language ID |", "|---|---|---|---|", *lines, "",
            *_paired_test_lines(seed_runs)]


def _paired_test_lines(seed_runs: List[List[Dict]]) -> List[str]:
    """TreLM against each baseline on the test pairs, paired: over the pre-training seeds (t
    interval, Holm over the comparisons) when 2+ ran, else a bootstrap over the pairs of the one
    run (which says nothing about seed-to-seed spread: the report says so)."""
    from .paired import bootstrap_difference, holm, paired_difference

    def finals(rows):
        return {r["model"]: r["test"] for r in rows if r.get("test")}

    runs = [finals(rows) for rows in seed_runs]
    if "trelm" not in runs[0]:
        return []
    rows, pvalues = [], []
    for base in (m for m in MODELS if m != "trelm" and m in runs[0]):
        for where in ("lower", "top"):
            if len(runs) >= 2:
                d = paired_difference([r["trelm"][where]["p1_mean_csls"] for r in runs],
                                      [r[base][where]["p1_mean_csls"] for r in runs])
                pvalues.append(d["p"])
            elif "hits_csls" in runs[0]["trelm"][where] and "hits_csls" in runs[0][base][where]:
                d = bootstrap_difference(runs[0]["trelm"][where]["hits_csls"], runs[0][base][where]["hits_csls"])
            else:
                continue
            rows.append((base, where, d))
    if not rows:
        return []
    adjusted = iter(holm(pvalues)) if pvalues else None
    lines = []
    for base, where, d in rows:
        p = f" | {next(adjusted):.3f}" if adjusted else ""
        lines.append(f"| TreLM − {MODEL_TITLES[base].split(' (')[0]} | P@1 {where} | {d['mean']:+.3f} | "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}]{p} |")
    if pvalues:
        how = (f"paired over {len(runs)} pre-training seeds (mean of the per-seed differences, 95% t interval; "
               f"Holm-adjusted p over the {len(pvalues)} comparisons)")
        head, rule = "| comparison | probe | difference | 95% interval | Holm p |", "|---|---|---|---|---|"
    else:
        how = (f"one pre-training seed: a paired bootstrap over the {rows[0][2]['n']} test pairs "
               f"({rows[0][2]['resamples']} resamples, 95% percentile interval); seeds are missing, so the "
               "interval does not include the spread between pre-training runs (trelm-demo --pretrain-seeds)")
        head, rule = "| comparison | probe | difference | 95% interval |", "|---|---|---|---|"
    return [f"Paired differences on the test pairs, {how}:", "", head, rule, *lines, ""]


def _export_lines(export: Optional[Dict]) -> List[str]:
    """The section on the exported model (trelm-export into <results>/hf), when the job made one."""
    if not export:
        return []
    if not export.get("dir"):
        return ["## Using the transferred model", "", f"Not exported: {export.get('error')}", ""]
    diff = ""
    if export.get("max_abs_diff_hidden") is not None:
        diff = (f" Max abs difference to the fairseq model on valid sentences: {export['max_abs_diff_hidden']:.1e} "
                f"(hidden states), {export['max_abs_diff_logits']:.1e} (MLM logits).")
    return ["## Using the transferred model", "",
            f"The TreLM model's final checkpoint, exported for `transformers` ({export.get('layout')} classes, "
            f"tokenizer and model card included): `{export['dir']}`.{diff}", "",
            "```python", *export["usage"], "```", ""]


def results_markdown(report: Dict, plot: Optional[str]) -> str:
    """results.md: the table and how it was measured, time to quality, stages, wall-clock."""
    from ..probes import MODULE_PROBE_TRAIN  # torch: only when a report is written

    md = [
        f"# TreLM transfer en → {report['lang']}: results",
        "",
        f"{_seeds_line(report)} Budgets: `{json.dumps(report['budgets'])}`.",
        *[line for line in [vocab_line(report.get("prepare")), source_head_line(report.get("prepare"))] if line],
        equal_compute_line(report) + " The fine-tuning recipe is the same for every model.",
        "",
        results_table(report),
        "",
        ("UAS/LAS: test split of the fixed turkish-treebanks split, punctuation excluded, Eisner decoding. "
         if any("uas" in d for d in report["downstream"].values()) else
         f"No parsing: no treebank is packaged for {report['lang']}. ")
        + ("Classification: accuracy (%) over 6 LibreOffice help modules on the target-language test split"
           + majority_note(report.get("classification_data")) + "; fine-tuned (cls acc), and as a frozen-feature "
           f"probe (cls probe: a logistic regression on the last layer's mean-pooled states of {MODULE_PROBE_TRAIN} "
           "training paragraphs, target-language or, zero-shot, English; no fine-tuning)."
           if report.get("classification_data") else
           "No classification: the corpus has no labelled paragraphs (help.<lang>.<split>.tsv)."),
        "",
        *depth_lines(report),
        *paired_downstream_lines(report),
        *combined_lines(report),
        "## Time to quality",
        "",
        _ttq_line(report["time_to_quality"]),
        *_ttq_seeds_lines(report),
        "",
        f"![target validation MLM loss and retrieval P@1]({os.path.basename(plot)})" if plot else "",
        "",
        *_probe_lines(report),
        "## Pre-training stages",
        "",
        "Valid loss: fairseq's valid loss of the stage's own objective in bits, averaged per batch (the "
        "curve above weights by masked token, hence small differences), " + _valid_sample_text(report) +
        ". Stages 2a/2b: CdLM + MLM summed; stage 1: MLM on both languages; stage 4 and the baselines: "
        "target MLM.",
        "",
        "| model | stage | updates | valid loss | TFLOP | seconds |",
        "|---|---|---|---|---|---|",
        *_stage_rows(report["pretraining"]),
        "",
        *_export_lines(report.get("export")),
        "## Wall-clock (s)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in report["timings_seconds"].items()],
        "",
    ]
    return "\n".join(md)


def _valid_sample_text(report: Dict) -> str:
    """Which valid sentences the curves and the stage table's valid losses are measured on."""
    n = report["budgets"].get("valid_sample", 0)
    if not n:
        return "on the whole valid split"
    return (f"on a fixed sample of at most {n} valid sentences per part, the same for every model (the curves too; "
            "the probes' target MLM uses the whole split)")


def timings_table(report: Dict) -> str:
    """The job's wall-clock per phase (what trelm-demo prints at the end)."""
    rows = report["timings_seconds"]
    total = rows.get("total") or sum(rows.values()) or 1.0
    steps = ((report.get("prepare") or {}).get("seconds") or {})  # stage 0's steps (0 s: done before)
    lines = [f"{'phase':<32} {'seconds':>8} {'share':>6}"]
    for k, v in rows.items():
        if k == "total":
            continue
        lines.append(f"{k:<32} {v:8.0f} {v / total:6.1%}")
        if k == "prepare":
            lines += [f"  {step:<30} {sec:8.0f} {sec / total:6.1%}" for step, sec in steps.items()
                      if step != "total_this_run" and sec]
    lines.append(f"{'total':<32} {total:8.0f}")
    return "\n".join(lines)


def write_report(report: Dict, results: str) -> None:
    write_json(os.path.join(results, "results.json"), report)
    plot = plot_curves(report["curves"], os.path.join(results, "mlm_loss.png"), report["lang"], report.get("probes"))
    write_text(os.path.join(results, "results.md"), results_markdown(report, plot))


def plot_curves(curves: Dict, path: str, lang: str, probes: Optional[List[Dict]] = None) -> Optional[str]:
    """The target MLM curves; with probe rows, retrieval P@1 at each probed point beside them."""
    import logging

    # before the import: importing matplotlib logs DEBUG lines when the root logger is at DEBUG
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = (("trelm", "o-"), ("scratch", "s-"), ("mlm_continued", "^--"))
    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(11.0 if probes else 6.4, 4.0), squeeze=False)
    ax = axes[0][0]
    for name, style in styles:
        pts = curves.get(name) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=MODEL_TITLES[name], markersize=3)
    ax.set_xlabel("pre-training updates (all stages, cumulative)")
    ax.set_ylabel(f"{lang} validation MLM loss (bits/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if probes:
        ax = axes[0][1]
        for name, style in styles:
            rows = [r for r in probes if r["model"] == name]
            for where, alpha in (("top", 1.0), ("lower", 0.5)):
                if rows:
                    ax.plot([r["updates"] for r in rows], [r[where]["p1_mean_csls"] for r in rows], style,
                            alpha=alpha, markersize=4, label=f"{MODEL_TITLES[name].split(' (')[0]}, {where}")
        ax.axhline(1.0 / probes[0]["pairs"], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xlabel("pre-training updates (all stages, cumulative)")
        ax.set_ylabel(f"bitext retrieval P@1, en↔{lang} (CSLS)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
