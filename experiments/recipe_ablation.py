#!/usr/bin/env python
"""Each deviation from the authors' recipe, alone and all together (docs/main-job.md).

    python experiments/recipe_ablation.py --data runs/tr/data --out runs/recipe-tr \\
        --configs previous,authors,freeze,mlm_lang,pooling,identity_emb,tri_copy,combine \\
        --seeds 1,2,3

Every configuration runs the TreLM stages (1, 2a, 2b, 3, 4) at the demo's budgets on a
prepared data directory (trelm-prepare), from that directory's init checkpoint with the
TRILayer copy and the identity-path embedding setting of the configuration.  After every
stage its checkpoint is probed in this process (trelm_fairseq.probes): target MLM on
mono/T/valid (bits), bitext retrieval P@1 (CSLS, mean of both directions) at the
lower-half output and at the top, and the language-ID probe on the lower half.  Configs
with the same stage 1 (same init, same seed) share it.  Checkpoints are deleted after
their stage is probed and its children have started from them (disk); the rows go to
OUT/results.jsonl as they come, and a re-run skips what is there.

Knobs (the "previous" value first, the authors' second):
    freeze        2a embeddings,lower / 2b upper,lm_head   vs   2a lower / 2b upper
    mlm_lang      --transfer-mlm-lang predicted             vs   target
    pooling       --lm-pooling sum-of-means                 vs   pooled (measured worse: the
                  default stayed sum-of-means, so "authors" here is the default + pooled)
    identity_emb  no embeddings on the identity path        vs   --tri-layer-identity-embed (no
                  measured effect: the default stayed off, it cannot be exported to transformers)
    tri_copy      TRILayer copies layers[k-1]               vs   layers[k]
    combine       trelm-combine --average all               vs   trained
A config named after a knob is "previous" with that one knob set to the authors' value;
"authors" sets all of them; modifiers of "authors" (joined by "+", e.g.
"mlm_both+adv_token=1"): lang_std=X (the target-language embedding row set apart by
N(0, X)), adv=X (--adv-weight X), adv_token=X (the same, per-token discriminator),
mlm_both (--transfer-mlm-lang both), tlm (--transfer-objective tlm: XLM's TLM on the
parallel pairs instead of CdLM in 2a and 2b), no_KNOB (that knob back to its previous value), lr=X (every stage's peak lr), s1=N / s2=N / s4=N
(updates of stage 1 / each of 2a and 2b / stage 4 instead of the demo's 24 / 24 / 48), warm=F
(every stage's warm-up F times its budget instead of a tenth), end_lr=F (the polynomial decay
ends at F times the peak lr instead of 0), lr1=X / lr2=X / lr4=X (the peak lr of stage 1 / of 2a
and 2b / of stage 4 only).
"mlm_continued" is the main job's baseline (target MLM from the mapped init without the
TRILayer, as many updates as the TreLM stages together), reported under "after 4".

"default" is the main job's recipe (authors+no_pooling+no_identity_emb+no_mlm_lang+lr1=1e-3: until
2026-12-03 without no_mlm_lang, i.e. 2b's MLM on T; rows record their recipe, and a re-run refuses
a results file whose rows meant another one); the
component ablations take modifiers on top of it: no_stage1 (2a and 2b start from the init),
only_2a (no 2b, no combine: stage 4 starts from 2a), identity_order (--cdlm-order identity:
CdLM without the TRILayer's re-ordering), average_every (combine averages every weight of 2a
and 2b instead of taking halves), plus adv=0, tlm and mlm_lang (2b's MLM on T) above; init=NAME starts from
DATA/init-NAME/model.pt (e.g. trelm-map-embeddings --method focus --out there) instead of DATA/init/model.pt.
--grid runs them all (GRID) and --results DIR writes the tables plus one verdict line per
component (each against "default", mean ± std over the seeds) to DIR/results.md:

    python experiments/recipe_ablation.py --grid --data runs/tr/data --out runs/ablations-tr \
        --seeds 1,2,3 --results results/tr-ablations          # = make ablations ABL_LANG=tr
"""
import argparse
import json
import dataclasses
import os
import sys
import time
from typing import Dict, Iterable

KNOBS = ("freeze", "mlm_lang", "pooling", "identity_emb", "tri_copy", "combine")
PREVIOUS = {k: False for k in KNOBS}  # False: previous behaviour, True: the authors'
AUTHORS = {k: True for k in KNOBS}
DEFAULT = "authors+no_pooling+no_identity_emb+no_mlm_lang+lr1=1e-3"  # the main job's recipe in these knobs
# The component grid: config -> (component, what the ablation puts in its place)
GRID = {
    "default": ("full TreLM (the main job's recipe)", ""),
    "default+adv=0": ("adversarial term", "none (lambda 0)"),
    "default+no_stage1": ("stage 1 (commonality)", "none: 2a and 2b start from the mapped init"),
    "default+only_2a": ("stage 2b and combine", "none: stage 4 starts from 2a"),
    "default+mlm_lang": ("2b's MLM part on S", "on T (the authors')"),
    "default+identity_order": ("TRILayer re-ordering by the alignment", "identity order"),
    "default+average_every": ("combine by halves", "the mean of every weight of 2a and 2b"),
    "default+tlm": ("CdLM in 2a and 2b", "XLM's TLM on the same pairs"),
}


def config(name: str) -> Dict:
    """The knob settings of a config name; "+" joins modifiers, e.g. "mlm_both+adv_token=1"."""
    if name.split("+")[0] == "default":
        name = DEFAULT + name[len("default"):]
    first = name.split("+")[0]
    c = dict(PREVIOUS if first in KNOBS or first == "previous" else AUTHORS)
    c.update(lang_std=0.0, adv_weight=None, adv_pooling=None, mlm_both=False, lr=None, s1=None, s2=None, s4=None,
             warm=None, end_lr=None, lr1=None, lr2=None, lr4=None, tlm=False, graph="trelm", identity_order=False,
             average_every=False, init=None)
    for part in name.split("+"):
        key, _, value = part.partition("=")
        if key in ("lr", "s1", "s2", "s4", "warm", "end_lr", "lr1", "lr2", "lr4") and value:
            c[key] = int(value) if key in ("s1", "s2", "s4") else float(value)
        elif part in KNOBS:
            c[part] = True
        elif part.startswith("no_") and part[3:] in KNOBS:  # leave one out of the authors' recipe
            c[part[3:]] = False
        elif part.startswith("init=") and part[5:].isidentifier():
            c["init"] = part[5:]
        elif part.startswith("lang_std="):
            c["lang_std"] = float(part.split("=", 1)[1])
        elif part.startswith("adv="):
            c["adv_weight"] = float(part.split("=", 1)[1])
        elif part.startswith("adv_token="):
            c["adv_weight"], c["adv_pooling"] = float(part.split("=", 1)[1]), "token"
        elif part in ("mlm_both", "tlm", "identity_order", "average_every"):
            c[part] = True
        elif part in ("no_stage1", "only_2a"):
            c["graph"] = {"no_stage1": "trelm_no_stage1", "only_2a": "trelm_2a_only"}[part]
        elif part not in ("previous", "authors"):
            raise SystemExit(f"unknown config {part!r}: expected previous, authors, default, one of {KNOBS}, "
                             "lang_std=X, adv=X, adv_token=X, mlm_both, tlm, identity_order, average_every, no_stage1, "
                             "only_2a, init=NAME, no_KNOB, lr=X, s1=N, s2=N, s4=N, warm=F, end_lr=F, lr1=X, lr2=X or lr4=X "
                             "(joined by +)")
    return c


def recipe(name: str) -> Dict:
    """What a config name means today (its knob settings), stored with each result row."""
    return {"mlm_continued": True} if name == "mlm_continued" else config(name)


def check_recipes(results: str, rows, configs) -> None:
    """A re-run skips the rows already in RESULTS by config name: refuse when a name about to
    run meant another recipe when its rows were written (e.g. "default" after the main job's
    recipe changed), instead of mixing two recipes under one name."""
    for i, row in enumerate(rows, 1):
        name = row["config"]
        if row.get("split", "test") != "valid":  # rows before the evidence protocol probed the test pairs
            raise SystemExit(f"{results}, line {i}: probed on the {row.get('split', 'test')} pairs; today's rows "
                             "are valid-split (valid decides, test reports): use a new --out")
        if name not in configs:
            continue
        if "recipe" not in row:
            raise SystemExit(f"{results}, line {i}: config {name!r} has rows without their recipe (written before "
                             "rows recorded it): resume it with the code that wrote it, or start a new --out")
        now = recipe(name)
        if row["recipe"] != now:
            then = row["recipe"]
            changed = ", ".join(f"{k}={then.get(k)!r} then, {now.get(k)!r} now"
                                for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k))
            raise SystemExit(f"{results}, line {i}: config {name!r} was measured with another recipe ({changed}): "
                             "use a new --out for today's recipe")


def init_variant(data: str, out_path: str, c: Dict, seed: int) -> str:
    """DATA/init/model.pt with the config's TRILayer copy, identity-path flag and
    language rows (same mapped embeddings for every config)."""
    if os.path.isfile(out_path):
        return out_path
    import torch

    from trelm_fairseq.checkpoint import atomic_torch_save, load_checkpoint

    source = os.path.join(data, f"init-{c['init']}" if c["init"] else "init", "model.pt")
    if not os.path.isfile(source):
        how = f"write it with trelm-map-embeddings --method {c['init']} ... --out {source} (docs/initialisations.md)" \
            if c["init"] else "run trelm-prepare"
        raise SystemExit(f"init={c['init'] or 'default'}: {source} does not exist: {how}")
    state = load_checkpoint(source)
    model = state["model"]
    cfg = state["cfg"]["model"]
    k = cfg["encoder_layers"] // 2 if cfg.get("tri_layer_position", -1) < 0 else cfg["tri_layer_position"]
    src = k if c["tri_copy"] else k - 1
    for name in [n for n in model if n.startswith("encoder.tri_layer.layer.")]:
        model[name] = model[f"encoder.layers.{src}." + name[len("encoder.tri_layer.layer."):]].clone()
    cfg.pop("tri_layer_embed_on_gather_only", None)  # the flag's earlier, inverted name
    cfg["tri_layer_identity_embed"] = c["identity_emb"]
    if c["lang_std"] > 0:
        gen = torch.Generator().manual_seed(seed)
        rows = model["encoder.embed_langs.weight"].clone()
        rows[1] = rows[0] + torch.randn(rows.shape[1], generator=gen) * c["lang_std"]
        model["encoder.embed_langs.weight"] = rows
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    atomic_torch_save(state, out_path)
    return out_path


def plan_for(c: Dict, data: str, out: str, init: str, lang: str, seed: int, budgets):
    """The main job's TreLM plan (trelm_fairseq.comparison.plan_for) with the config's options."""
    from trelm_fairseq.comparison import plan_for as job_plan

    mlm_lang = "both" if c["mlm_both"] else ("target" if c["mlm_lang"] else "predicted")
    extra = ["--transfer-mlm-lang", mlm_lang, "--lm-pooling", "pooled" if c["pooling"] else "sum-of-means"]
    if c["adv_weight"] is not None:
        extra += ["--adv-weight", str(c["adv_weight"])]
    if c["adv_pooling"]:
        extra += ["--adv-pooling", c["adv_pooling"]]
    if c["tlm"]:  # task options: they change only the transfer stages' data
        extra += ["--transfer-objective", "tlm"]
    if c["identity_order"]:
        extra += ["--cdlm-order", "identity"]
    plan = job_plan(os.path.basename(out), data, os.path.dirname(out), lang, budgets, seed, init=init,
                    graph=c["graph"])
    stage_args = {} if c["freeze"] else {"2a": ["--freeze", "embeddings,lower"], "2b": ["--freeze", "upper,lm_head"]}
    stage_args = {k: v for k, v in stage_args.items() if k in plan.specs}
    updates = dict(plan.updates, **{k[1]: c[k] for k in ("s1", "s2", "s4") if c[k]})
    lr = c["lr"] or budgets.lr
    if c["end_lr"] is not None:
        extra += ["--end-learning-rate", str(c["end_lr"] * lr)]
    average = "every" if c["average_every"] else "trained" if c["combine"] else "all"
    # stage 1 at the base lr, as when these configs were measured (the main job's stage 1 at
    # twice the lr, its default since, is "lr1=1e-3" here)
    plan = dataclasses.replace(plan, extra_args=plan.extra_args + extra, stage_args=stage_args, updates=updates,
                               lr=lr, stage1_lr_scale=1.0, combine_average=average)
    # stage args come last on the command line, so they override the plan's warm-up and lr
    more = {key: [] for key in plan.specs}
    for key, spec in plan.specs.items():
        if spec.budget and c["warm"] is not None:
            more[key] += ["--warmup-updates", str(max(1, round(c["warm"] * plan.budget(key))))]
        stage_lr = c.get("lr" + spec.budget) if spec.budget else None
        if stage_lr:
            more[key] += ["--lr", str(stage_lr)]
            if c["end_lr"] is not None:
                more[key] += ["--end-learning-rate", str(c["end_lr"] * stage_lr)]
    if not any(more.values()):
        return plan
    return dataclasses.replace(plan, stage_args={k: stage_args.get(k, []) + more[k] for k in more
                                                 if stage_args.get(k) or more[k]})


def drop_checkpoints(dirs: Iterable[str]) -> None:
    """Delete the *.pt of probed stages (disk: ~150-190 MB each, three per stage)."""
    for d in dirs:
        for f in os.listdir(d):
            if f.endswith(".pt"):
                os.unlink(os.path.join(d, f))


def stage1_key(c: Dict, seed: int) -> str:
    """Configs that share this key have the same stage 1 (init and its options)."""
    return (f"init-{c['init']}_" if c["init"] else "") + \
           f"copy{'k' if c['tri_copy'] else 'k-1'}_id{int(c['identity_emb'])}_std{c['lang_std']}_" \
           f"adv{c['adv_weight']}{c['adv_pooling'] or ''}_lr{c['lr']}_s1{c['s1']}_seed{seed}" + \
           (f"_warm{c['warm']}" if c["warm"] is not None else "") + (f"_end{c['end_lr']}" if c["end_lr"] is not None else "") + \
           (f"_lr1{c['lr1']}" if c["lr1"] else "")


def report(results: str) -> str:
    """Markdown tables of OUT/results.jsonl: per config, mean (± std over seeds) of every
    probe after every stage."""
    import statistics

    with open(results, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    stages = ["init", "1", "2a", "2b", "3", "4"]

    def cell(cfg, stage, key, fmt):
        vals = [r[key] for r in rows if r["config"] == cfg and r["stage"] == stage and r.get(key) is not None]
        if not vals:
            return "-"
        if len(vals) == 1:
            return fmt.format(vals[0])
        return (fmt + " ± " + fmt).format(statistics.mean(vals), statistics.stdev(vals)) + f" (n={len(vals)})"

    out = []
    for key, title, fmt in (("target_mlm_bits", "target valid MLM (bits, lower is better)", "{:.2f}"),
                            ("p1_lower", "bitext retrieval P@1, CSLS, lower-half output (1,000 valid pairs: valid decides)", "{:.3f}"),
                            ("p1_top", "bitext retrieval P@1, CSLS, top layer", "{:.3f}"),
                            ("langid", "language-ID probe on the lower half (0.5 = indistinguishable)", "{:.3f}")):
        out += [f"**{title}**", "", "| config | " + " | ".join(f"after {s}" for s in stages) + " |",
                "|---" * (len(stages) + 1) + "|"]
        out += [f"| {c} | " + " | ".join(cell(c, s, key, fmt) for s in stages) + " |" for c in configs]
        out.append("")
    out += ["**training cost of all stages (the FLOP ledger's count from the stage logs; seconds on the shared "
            "2-core machine)**", "", "| config | TFLOP | seconds | n |", "|---|---|---|---|"]
    for c in configs:
        per_seed = {}
        finished = {r["seed"] for r in rows if r["config"] == c and r["stage"] == "4"}
        for r in rows:
            if r["config"] == c and r.get("gflop") is not None and r["seed"] in finished:
                t = per_seed.setdefault(r["seed"], [0.0, 0.0])
                t[0] += r["gflop"] / 1e3
                t[1] += r.get("seconds") or 0.0
        if per_seed:
            tf, sec = zip(*per_seed.values())
            out.append(f"| {c} | {statistics.mean(tf):.1f} | {statistics.mean(sec):.0f} | {len(per_seed)} |")
    out.append("")
    return "\n".join(out)


def _by_seed(rows, cfg, stage, key) -> Dict[int, float]:
    return {r["seed"]: r[key] for r in rows if r["config"] == cfg and r["stage"] == stage and r.get(key) is not None}


# what the verdicts compare: (results key, stage, label, +1 when higher is better)
VERDICT_METRICS = (("target_mlm_bits", "4", "target MLM (bits)", -1), ("p1_lower", "4", "P@1 lower", 1),
                   ("p1_top", "4", "P@1 top", 1), ("p1_lower", "3", "P@1 lower after combine", 1),
                   ("p1_top", "3", "P@1 top after combine", 1))
ALPHA = 0.05


def verdicts(results: str, reference: str = "default") -> str:
    """One line per grid component: the ablation's change of each final probe against the
    reference, paired over the seeds both ran (comparison/paired.py: the mean per-seed
    difference and its 95% t interval), and whether the component helps.  A change counts when
    its Holm-adjusted p over every comparison of the table is below ALPHA (needs 2+ matched
    seeds)."""
    from trelm_fairseq.comparison.paired import holm, paired_difference

    with open(results, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    judged = dict(GRID)
    for row in rows:  # TreLM on another init (default+init=NAME) is judged against the map's init
        name = row["config"]
        if name.startswith(reference + "+init=") and "+" not in name[len(reference) + 1:]:
            judged[name] = ("the least-squares map's init", f"the {name.split('=', 1)[1]} init")
    present = {r["config"] for r in rows}
    lines, tests = [], []  # tests: (line index, metric index, paired_difference)
    for cfg, (component, replacement) in judged.items():
        if cfg == reference or cfg not in present:
            continue
        cells, n = [], 0
        for m, (key, stage, label, sign) in enumerate(VERDICT_METRICS):
            a, b = _by_seed(rows, cfg, stage, key), _by_seed(rows, reference, stage, key)
            seeds = sorted(set(a) & set(b))
            n = max(n, len(seeds))
            if len(seeds) < 2:
                cells.append(None)
                continue
            d = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
            cells.append(d)
            tests.append((len(lines), m, d))
        lines.append((component, replacement, n, cells))
    adjusted = holm([d["p"] for _, _, d in tests])
    significant = {(i, m): p < ALPHA for (i, m, _), p in zip(tests, adjusted)}
    out = [f"**Verdicts: each component against the full recipe** (Δ = ablation minus full: the mean of the "
           f"per-seed differences over the seeds both ran [its 95% t interval]; * = Holm-adjusted p < {ALPHA} over "
           f"the {len(tests)} comparisons of this table; 'helps' = removing or replacing it makes a probe worse)", "",
           "| component | replaced by | n | " + " | ".join(f"Δ {m[2]}" for m in VERDICT_METRICS) + " | verdict |",
           "|---|---|---|" + "---|" * len(VERDICT_METRICS) + "---|"]
    for i, (component, replacement, n, cells) in enumerate(lines):
        better, worse, text = [], [], []
        for m, d in enumerate(cells):
            if d is None:
                text.append("-")
                continue
            star = significant[(i, m)]
            text.append(f"{d['mean']:+.3f}{'*' if star else ''} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
            if star:
                (better if d["mean"] * VERDICT_METRICS[m][3] > 0 else worse).append(VERDICT_METRICS[m][2])
        if not n:
            continue
        if worse and not better:
            verdict = "helps (without it: worse " + ", ".join(worse) + ")"
        elif better and not worse:
            verdict = "hurts (without it: better " + ", ".join(better) + ")"
        elif better and worse:
            verdict = "mixed (without it: worse " + ", ".join(worse) + "; better " + ", ".join(better) + ")"
        else:
            verdict = "no measurable effect" if n > 1 else "one seed: not judged"
        out.append(f"| {component} | {replacement} | {n} | " + " | ".join(text) + f" | {verdict} |")
    return "\n".join(out) + "\n"


def write_results(out: str, dest: str, configs) -> None:
    """DEST/results.md (the tables, and the verdicts when the grid's reference ran) and a copy
    of OUT/results.jsonl, each written to a temp file and renamed."""
    from trelm_fairseq.fileio import write_text

    results = os.path.join(out, "results.jsonl")
    with open(results, encoding="utf-8") as f:
        raw = f.read()
    text = "# Component ablations (experiments/recipe_ablation.py)\n\n" + f"configs: {', '.join(configs)}\n\n"
    rows = map(json.loads, raw.splitlines())
    ref = next((r.get("recipe") for r in rows if r["config"] == "default"), None)
    if ref:  # what "default" meant when these rows were measured (the main job's recipe changes)
        text += "default = " + ", ".join(f"{k}={v}" for k, v in ref.items() if v not in (None, False)) + \
            " (the rest off or unset; mlm_lang: 2b's MLM on T)\n\n"
    if "default" in configs:
        text += verdicts(results) + "\n"
    text += report(results)
    os.makedirs(dest, exist_ok=True)
    write_text(os.path.join(dest, "results.md"), text)
    write_text(os.path.join(dest, "results.jsonl"), raw)
    print(f"wrote {dest}/results.md", flush=True)


def run_mlm_continued(args, budgets, langs, seed, probe) -> None:
    """The main job's strongest baseline: target MLM from the mapped init without the
    TRILayer, for as many updates as all TreLM stages together; probed at its end."""
    from trelm_fairseq.comparison import derived_init, plan_for as job_plan
    from trelm_fairseq.stages import run_all

    work = os.path.join(args.out, "mlm_continued")
    init = derived_init(args.data, os.path.join(work, "init.pt"), "no_tri", 1)
    plan = job_plan(f"seed{seed}", args.data, work, langs[1], budgets, seed, init=init, graph="mlm")
    rows = run_all(plan, log=print, echo=False)
    probe("mlm_continued", seed, "init", init)
    probe("mlm_continued", seed, "4", plan.stages["1"].output_checkpoint(),
          {"seconds": rows[0].get("seconds"), "gflop": rows[0].get("gflop")})
    if not args.keep_checkpoints:
        drop_checkpoints([plan.stages["1"].dir])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=False)
    p.add_argument("--out", required=True)
    p.add_argument("--report", action="store_true", help="print the tables of OUT/results.jsonl and stop")
    p.add_argument("--configs", default="previous,authors," + ",".join(KNOBS))
    p.add_argument("--grid", action="store_true", help="the component grid (GRID) instead of --configs")
    p.add_argument("--results", metavar="DIR",
                   help="write DIR/results.md (tables + verdicts against 'default') and DIR/results.jsonl at the end")
    p.add_argument("--seeds", default="1")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the demo's stage budgets")
    p.add_argument("--keep-checkpoints", action="store_true")
    args = p.parse_args(argv)
    configs = list(GRID) if args.grid else args.configs.split(",")
    for name in configs:
        if name != "mlm_continued":
            config(name)  # an unknown modifier fails here, before anything runs
    if args.report:
        print(report(os.path.join(args.out, "results.jsonl")))
        if "default" in configs:  # the grid's reference: as write_results decides
            print(verdicts(os.path.join(args.out, "results.jsonl")))
        if args.results:
            write_results(args.out, args.results, configs)
        return 0
    if not args.data:
        p.error("--data is required (unless --report)")

    from trelm_fairseq.comparison import Budgets
    from trelm_fairseq.probes import data_langs, probe_checkpoint
    from trelm_fairseq.stages import run_all

    budgets = Budgets(scale=args.scale)
    langs = data_langs(args.data, None)
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    done = set()
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        check_recipes(results, rows, configs)
        done = {(r["config"], r["seed"], r["stage"]) for r in rows}

    def record(row):
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {row['config']} seed {row['seed']} stage {row['stage']}: "
              f"target MLM {row['target_mlm_bits']:.3f}, P@1 lower {row['p1_lower']:.3f} top {row['p1_top']:.3f}, "
              f"lang-ID {row['langid']:.3f}", flush=True)

    def probe(name, seed, stage, ckpt, extra=None):
        if (name, seed, stage) in done:
            return
        r = probe_checkpoint(ckpt, args.data, langs, "valid", 1000, tokens_per_sample=budgets.tokens_per_sample)
        record({"config": name, "recipe": recipe(name), "seed": seed, "stage": stage, "split": r["split"],
                "target_mlm_bits": r["target_mlm_bits"],
                "p1_lower": r["lower"]["p1_mean_csls"], "p1_top": r["top"]["p1_mean_csls"],
                "p1_lower_nn": (r["lower"]["s2t_nn"] + r["lower"]["t2s_nn"]) / 2,
                "langid": r["lower"]["langid_acc"], **(extra or {})})

    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in configs:
            if name == "mlm_continued":
                run_mlm_continued(args, budgets, langs, seed, probe)
                continue
            c = config(name)
            s1 = os.path.join(args.out, "shared", stage1_key(c, seed))
            init = init_variant(args.data, os.path.join(s1, "init.pt"), c, seed)
            out = os.path.join(args.out, name, f"seed{seed}")
            plan = plan_for(c, args.data, out, init, langs[1], seed, budgets)
            t0 = time.time()
            probe(name, seed, "init", init)
            if "1" in plan.specs:
                # stage 1 once per (init, seed): its own plan dir, linked into this config's
                shared_plan = plan_for(c, args.data, s1, init, langs[1], seed, budgets)
                row1 = run_all(shared_plan, stages="1", log=print, echo=False)[0]
                probe(name, seed, "1", shared_plan.stages["1"].output_checkpoint(),
                      {"seconds": row1.get("seconds"), "gflop": row1.get("gflop")})
                own1 = plan.stages["1"].dir
                if not os.path.exists(own1):
                    os.makedirs(os.path.dirname(own1), exist_ok=True)
                    os.symlink(shared_plan.stages["1"].dir, own1)
            later = [key for key in plan.specs if key != "1"]
            rows = run_all(plan, stages=",".join(later), log=print, echo=False)
            cost = {r["stage"]: {"seconds": r.get("seconds"), "gflop": r.get("gflop")} for r in rows}
            for key in later:
                probe(name, seed, key, plan.stages[key].output_checkpoint(), cost.get(key))
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {time.time() - t0:.0f}s", flush=True)
            if not args.keep_checkpoints:
                drop_checkpoints(plan.stages[key].dir for key in later)
    if args.results:
        write_results(args.out, args.results, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
