"""The main job (``make demo`` / ``trelm-demo``): transfer the embedded English
model to a target language, then compare it with baselines downstream.

    trelm-demo --lang tr                    # CPU-sized budgets (~28 min on 2 idle cores)
    trelm-demo --lang tr --scale 20 --seeds 3 --max-tokens 16384   # a GPU-sized run

Steps (each resumable: a re-run skips what is finished):

 0. import the source model (trelm-import; default all-MiniLM-L6-v2) and prepare the data
    (trelm-prepare: LibreOffice help corpus, joint vocabulary, binarization, alignment,
    embedding mapping -> init checkpoint)
 1. TreLM: stage 1 -> 2a, 2b -> combine -> stage 4 (trelm-stages)
 2. baselines at equal compute (the same number of updates as all TreLM stages together,
    same architecture, same target data):
      scratch        random init, new vocabulary, MLM on the target language
      mapped_init    the init checkpoint (new vocabulary, mapped embeddings), no training
      mlm_continued  init checkpoint without TRILayer, MLM on the target language, no
                     adversarial term (TreLM minus TRILayer / CdLM / adversarial)
 3. downstream, for every model and seed: dependency parsing (turkish-treebanks, UAS/LAS,
    Tr only) and module classification of help paragraphs (target-language training, and
    zero-shot: English training, target-language test)
 4. report: <results>/results.md, results.json, mlm_loss.png; the table is printed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Union

from .errors import TreLMError, cli_errors
from .fileio import atomic_write, write_json
from .preprocess.vocab import vocab_size_arg

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS = ("trelm", "scratch", "mapped_init", "mlm_continued")
MODEL_TITLES = {
    "trelm": "TreLM (stages 1-2a-2b-combine-4)",
    "scratch": "from scratch (random init)",
    "mapped_init": "source + mapped embeddings, no transfer",
    "mlm_continued": "MLM continued (no TRILayer, no adversarial)",
}
PARSING_LANGS = ("tr",)  # languages with a packaged treebank


@dataclass
class Budgets:
    """Every budget of the job in one place; ``scale`` multiplies the update counts."""

    # CPU defaults: ~1.5-3 s per pre-training update on 2 cores (one sub-batch per language)
    stage1: int = 24
    stage2: int = 24  # each of 2a and 2b
    stage4: int = 48
    parse_updates: int = 100
    cls_updates: int = 60
    max_tokens: int = 1024  # per sub-batch
    tokens_per_sample: int = 128
    # CPU budgets are ~1/500 of the paper's, so the paper's 3e-5 barely moves the new embeddings
    # and LM head. Measured on en->tr at these budgets (docs/main-job.md): target MLM after the
    # 120 TreLM updates 10.84 bits at lr 1e-4 vs 9.46 at 5e-4 (from scratch 10.79 vs 9.95);
    # parsing valid UAS after 100 fine-tuning updates 38.0 at 1e-4 vs 49.8 at 5e-4.
    lr: float = 5e-4
    finetune_lr: float = 5e-4
    # auto: sized to the language's corpus by trelm-prepare (up to 16000; fewer pieces where the
    # corpus cannot support them, e.g. vi, hi, km); an integer is used exactly
    vocab_size: Union[int, str] = "auto"
    max_pairs: Optional[int] = None
    max_cls_train: Optional[int] = 4000
    validate_every: int = 12
    scale: float = 1.0

    def n(self, name: str) -> int:
        return max(1, int(round(getattr(self, name) * self.scale)))

    @property
    def pretrain_total(self) -> int:
        """Updates of all TreLM training stages together: the equal-compute budget."""
        return self.n("stage1") + 2 * self.n("stage2") + self.n("stage4")


def say(msg: str) -> None:
    print(f"[trelm-demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: Sequence[str], log_path: Optional[str] = None, what: str = "", echo: bool = True) -> str:
    """Run a command, streaming its output (indented) and appending it to log_path;
    returns the output; TreLMError naming the log on failure."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    say(f"{what}: {' '.join(map(str, cmd[:3]))} ...")
    t0 = time.time()
    lines: List[str] = []
    logf = None
    if log_path:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        logf = open(log_path, "a", encoding="utf-8")
    try:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env)
        for line in proc.stdout:
            lines.append(line)
            if logf:
                logf.write(line)
            if echo and not _is_noise(line):
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    finally:
        if logf:
            logf.close()
    out = "".join(lines)
    if rc != 0:
        raise TreLMError(f"{what} failed (exit {rc}); full output in {log_path}; last lines:\n{out[-3000:]}")
    say(f"{what}: done in {time.time() - t0:.0f}s")
    return out


def _is_noise(line: str) -> bool:
    """fairseq's per-batch INFO chatter and library warnings: kept in the logs, not echoed."""
    return ("| INFO |" in line and "| valid |" not in line and "| train |" not in line) or "tensorboardX" in line


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cached(path: str, compute):
    """Return the json at path, or compute it, save it (atomically) and return it."""
    if os.path.isfile(path):
        return read_json(path)
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, value)
    return value


def mean_std(values: List[float]) -> Dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


# ----------------------------------------------------------------------------
# downstream: parsing and classification of one model checkpoint
# ----------------------------------------------------------------------------
def model_shape_args(checkpoint: str, prefix: str = "trelm") -> List[str]:
    """--arch <prefix>_<size> + shape flags for a downstream fairseq-train on ``checkpoint``."""
    from .checkpoint import checkpoint_model_config, load_checkpoint
    from .stages import arch_args

    cfg = checkpoint_model_config(load_checkpoint(checkpoint), checkpoint)
    args = arch_args(cfg)  # ["--arch", arch, ("--tri-layer",) shape flags...]
    arch = args[1]
    if prefix != "trelm":
        arch = prefix + arch[len("trelm"):] if arch != "trelm" else prefix
    args[1] = arch
    return args


def finetune_parser(parse_data: str, checkpoint: str, out: str, budgets: Budgets, seed: int) -> Dict:
    """Fine-tune a trelm checkpoint for dependency parsing, evaluate on test (UAS/LAS)."""
    metrics_path = os.path.join(out, "test_metrics.json")
    if os.path.isfile(metrics_path):
        return read_json(metrics_path)
    n = budgets.n("parse_updates")
    run([
        os.path.join(BIN, "fairseq-train"), parse_data, "--user-dir", USER_DIR,
        "--task", "trelm_parsing", "--criterion", "trelm_parsing",
        *model_shape_args(checkpoint, prefix="trelm_parser"),
        "--restore-file", checkpoint, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--reset-lr-scheduler", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-6",
        "--weight-decay", "0.01", "--clip-norm", "5", "--lr", str(budgets.finetune_lr),
        "--lr-scheduler", "polynomial_decay", "--warmup-updates", str(max(1, n // 10)),
        "--total-num-update", str(n), "--max-update", str(n), "--batch-size", "16",
        "--max-tokens", str(budgets.max_tokens), "--save-dir", out, "--no-epoch-checkpoints",
        # validate three times, the last at the final update (fairseq validates there anyway)
        "--save-interval-updates", str(-(-n // 3)), "--keep-interval-updates", "1",
        "--validate-interval-updates", str(-(-n // 3)),
        "--best-checkpoint-metric", "las", "--maximize-best-checkpoint-metric",
        "--seed", str(seed), "--log-format", "simple", "--log-interval", "25", "--num-workers", "0",
    ], os.path.join(out, "train.log"), f"parsing fine-tune ({os.path.basename(os.path.dirname(out))}, seed {seed})")
    run([os.path.join(BIN, "trelm-parse-eval"), "--checkpoint", os.path.join(out, "checkpoint_best.pt"),
         "--data", parse_data, "--split", "test", "--output-prefix", os.path.join(out, "test"), "--quiet"],
        os.path.join(out, "eval.log"), "parsing test evaluation")
    metrics = read_json(os.path.join(out, "test.json"))
    write_json(metrics_path, metrics)
    prune_checkpoints(out)
    return metrics


def finetune_classifier(setting_dir: str, checkpoint: str, out: str, budgets: Budgets, seed: int,
                        train_lang_id: int, test_lang_id: int) -> float:
    """sentence_prediction fine-tune on ``setting_dir``; test accuracy (%) of the best-valid checkpoint."""
    from . import classification as cls

    acc_path = os.path.join(out, "test_accuracy.json")
    if os.path.isfile(acc_path):
        return read_json(acc_path)["accuracy"]
    from .checkpoint import checkpoint_model_config, load_checkpoint

    shape = model_shape_args(checkpoint)
    arch = shape[1]
    # sentence_prediction sets the model's positions to its --max-positions: keep the checkpoint's
    max_positions = int(checkpoint_model_config(load_checkpoint(checkpoint), checkpoint).max_positions)
    cmd = cls.finetune_command(setting_dir, checkpoint, out, arch, budgets.n("cls_updates"), train_lang_id,
                               seed=seed, lr=budgets.finetune_lr, max_positions=max_positions, extra=shape[2:])
    run(cmd, os.path.join(out, "train.log"), f"classification fine-tune ({os.path.basename(out)})")
    stdout = run(cls.evaluate_command(setting_dir, os.path.join(out, "checkpoint_best.pt"), test_lang_id),
                 os.path.join(out, "eval.log"), "classification test evaluation")
    acc = cls.parse_accuracy(stdout)
    write_json(acc_path, {"accuracy": acc})
    prune_checkpoints(out)
    return acc


def prune_checkpoints(out: str) -> None:
    """After a fine-tune is evaluated only checkpoint_best.pt is kept: each checkpoint of the
    demo's model is ~230 MB with its optimizer state, and the interval / last copies only
    serve to resume a run that is already finished."""
    for name in os.listdir(out):
        if name.startswith("checkpoint") and name.endswith(".pt") and name != "checkpoint_best.pt":
            os.remove(os.path.join(out, name))


# ----------------------------------------------------------------------------
# pre-training: TreLM and the baselines
# ----------------------------------------------------------------------------
def plan_for(name: str, data: str, work: str, lang: str, budgets: Budgets, seed: int, init: Optional[str] = None,
             graph: str = "trelm"):
    from .stages import StagePlan

    if graph == "trelm":
        updates = {"1": budgets.n("stage1"), "2": budgets.n("stage2"), "4": budgets.n("stage4")}
    else:
        updates = {"1": budgets.pretrain_total}
    return StagePlan(
        data=data, out=os.path.join(work, name), langs=f"en,{lang}", init=init, updates=updates,
        lr=budgets.lr, max_tokens=budgets.max_tokens, tokens_per_sample=budgets.tokens_per_sample,
        save_interval_updates=budgets.n("validate_every"), seed=seed, graph=graph,
        extra_args=["--validate-interval-updates", str(budgets.n("validate_every")), "--num-workers", "0"],
    )


def derived_init(data: str, out_path: str, kind: str, seed: int) -> str:
    """Init checkpoints of the baselines, derived from the TreLM init checkpoint:
    ``scratch`` (same shape, no TRILayer, every weight random) and ``no_tri`` (the
    mapped init with its TRILayer removed)."""
    if os.path.isfile(out_path):
        return out_path
    import torch
    from fairseq.data import Dictionary

    from .checkpoint import build_model, checkpoint_model_config, load_checkpoint, save_checkpoint

    init = os.path.join(data, "init", "model.pt")
    state = load_checkpoint(init)
    cfg = checkpoint_model_config(state, init)
    cfg.tri_layer = False
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    dictionary.add_symbol("<mask>")
    torch.manual_seed(seed)
    model = build_model(cfg, dictionary)
    if kind == "no_tri":
        weights = {k: v for k, v in state["model"].items() if not k.startswith("encoder.tri_layer.")}
        model.load_state_dict(weights, strict=True)
    elif kind != "scratch":
        raise ValueError(kind)
    save_checkpoint(out_path, model, cfg, task_cfg={"_name": "trelm_transfer", "data": data, "stage": "language_specific"},
                    meta={"derived_from": init, "kind": kind})
    return out_path


def validate_target_mlm(checkpoint: str, data: str, lang: str, log_path: str) -> float:
    """Target-language validation MLM loss (base 2, per masked token) of a checkpoint."""
    checkpoint = with_transfer_cfg(checkpoint, os.path.join(os.path.dirname(log_path), "validate-tmp.pt"),
                                   langs=f"en,{lang}")
    out = run([
        os.path.join(BIN, "fairseq-validate"), data, "--user-dir", USER_DIR, "--path", checkpoint,
        "--task", "trelm_transfer", "--valid-subset", "valid", "--max-tokens", "4096",
        "--required-batch-size-multiple", "1", "--num-workers", "0",
        # adv_weight 0: no discriminator (it does not enter the MLM loss, and fairseq-validate
        # builds the criterion before it could learn the model's hidden size)
        "--model-overrides", repr({"stage": "language_specific", "data": data, "langs": f"en,{lang}",
                                   "adv_weight": 0.0}),
    ], log_path, f"target MLM validation of {os.path.relpath(checkpoint)}")
    for key in ("mlm_loss", "loss"):
        vals = [float(v) for v in _logged(out, key)]
        if vals:
            return vals[-1]
    raise TreLMError(f"fairseq-validate printed no loss for {checkpoint}:\n{out[-2000:]}")


def with_transfer_cfg(checkpoint: str, tmp_path: str, langs: str) -> str:
    """fairseq-validate rebuilds task and criterion from the checkpoint's cfg: a checkpoint
    written outside fairseq-train (init, combine) gets a copy at tmp_path whose cfg names the
    trelm_transfer task (for the language pair ``langs``, e.g. "en,de") and the trelm_loss
    criterion. (--model-overrides only reaches keys the saved cfg already has.)"""
    from omegaconf import OmegaConf

    from .checkpoint import atomic_torch_save, load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = state.get("cfg")
    if cfg is None or (cfg.get("criterion") is not None and cfg["task"].get("_name") == "trelm_transfer"):
        return checkpoint
    cfg = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)
    cfg["task"] = {"_name": "trelm_transfer", "data": "", "langs": langs, "stage": "language_specific", "seed": 1}
    cfg["criterion"] = {"_name": "trelm_loss", "adv_weight": 0.0}
    state["cfg"] = OmegaConf.create(cfg)
    atomic_torch_save(state, tmp_path)
    return tmp_path


def _logged(stdout: str, key: str) -> List[str]:
    import re

    return re.findall(r"\| " + re.escape(key) + r" ([0-9.]+)", stdout)


def valid_curve(plan, key: str, offset: int) -> List[List[float]]:
    """[(cumulative updates, target valid MLM loss)] from a stage's json train log."""
    from .stages import TRAIN_LOG

    path = os.path.join(plan.stages[key].dir, TRAIN_LOG)
    points = []
    if not os.path.isfile(path):
        return points
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find("{")
            if i < 0 or '"valid_' not in line:
                continue
            try:
                rec = json.loads(line[i:])
            except ValueError:
                continue
            loss = rec.get("valid_mlm_loss", rec.get("valid_loss"))
            if loss is not None and "valid_num_updates" in rec:
                points.append([offset + int(rec["valid_num_updates"]), float(loss)])
    return points


# ----------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------
def run_job(args) -> Dict:
    from . import classification as cls
    from .stages import run_all

    b = Budgets(scale=args.scale, lr=args.lr, finetune_lr=args.finetune_lr, max_tokens=args.max_tokens,
                vocab_size=args.vocab_size, max_pairs=args.max_pairs)
    for name in ("stage1", "stage2", "stage4", "parse_updates", "cls_updates"):
        if getattr(args, name, None) is not None:
            setattr(b, name, getattr(args, name))
    lang, work, results = args.lang, os.path.abspath(args.work), os.path.abspath(args.results)
    data = os.path.join(work, "data")
    os.makedirs(results, exist_ok=True)
    seeds = list(range(1, args.seeds + 1))
    timings: Dict[str, float] = {}
    t_job = time.time()
    say(f"target language {lang}; work dir {work}; results in {results}")
    say(f"budgets: {json.dumps(asdict(b))}; equal-compute pre-training budget {b.pretrain_total} updates")

    # 0. data + init checkpoint (trelm-prepare skips finished steps)
    t0 = time.time()
    prep = [os.path.join(BIN, "trelm-prepare"), "--src", "en", "--tgt", lang, "--out", data,
            "--vocab-size", str(b.vocab_size)]
    if args.source_model:
        prep += ["--source-model", args.source_model]
    if args.cache_dir:
        prep += ["--cache-dir", args.cache_dir]
    if b.max_pairs:
        prep += ["--max-pairs", str(b.max_pairs)]
    run(prep, os.path.join(work, "logs", "prepare.log"), "stage 0 (trelm-prepare)")
    timings["prepare"] = time.time() - t0
    if os.path.isfile(os.path.join(data, "prepare.json")):
        say(vocab_line(read_json(os.path.join(data, "prepare.json"))))
    init = os.path.join(data, "init", "model.pt")

    # 1-2. pre-training: TreLM, then the baselines at equal compute
    seed = seeds[0]
    plans = {
        "trelm": plan_for("trelm", data, work, lang, b, seed),
        "scratch": plan_for("scratch", data, work, lang, b, seed, graph="mlm",
                            init=derived_init(data, os.path.join(work, "scratch", "init.pt"), "scratch", seed)),
        "mlm_continued": plan_for("mlm_continued", data, work, lang, b, seed, graph="mlm",
                                  init=derived_init(data, os.path.join(work, "mlm_continued", "init.pt"), "no_tri",
                                                    seed)),
    }
    pretrain: Dict[str, Dict] = {}
    for name, plan in plans.items():
        t0 = time.time()
        say(f"pre-training '{name}' ({MODEL_TITLES[name]})")
        rows = run_all(plan, log=say, echo=False)
        pretrain[name] = {"stages": rows, "updates": sum(r.get("updates") or 0 for r in rows),
                          "seconds": sum(r.get("seconds") or 0 for r in rows)}
        timings[f"pretrain_{name}"] = time.time() - t0
    checkpoints = {
        "trelm": plans["trelm"].stages["4"].output_checkpoint(),
        "scratch": plans["scratch"].stages["1"].output_checkpoint(),
        "mapped_init": init,
        "mlm_continued": plans["mlm_continued"].stages["1"].output_checkpoint(),
    }

    # target-language MLM loss curves; TreLM's intermediate checkpoints are validated on
    # target MLM too, so the time-to-quality is measured over the whole schedule
    curves_path = os.path.join(work, "curves.json")

    def compute_curves():
        tp = plans["trelm"]
        u1, u2 = tp.budget("1"), tp.budget("2a")
        log = os.path.join(work, "logs", "validate.log")
        trelm = [[0, validate_target_mlm(init, data, lang, log)],
                 [u1, validate_target_mlm(tp.stages["1"].output_checkpoint(), data, lang, log)],
                 [u1 + 2 * u2, validate_target_mlm(tp.stages["3"].output_checkpoint(), data, lang, log)]]
        trelm += valid_curve(tp, "4", u1 + 2 * u2)
        return {
            "trelm": trelm,
            "scratch": valid_curve(plans["scratch"], "1", 0),
            "mlm_continued": [[0, trelm[0][1]]] + valid_curve(plans["mlm_continued"], "1", 0),
        }

    curves = cached(curves_path, compute_curves)

    # 3. downstream
    t0 = time.time()
    downstream: Dict[str, Dict] = {m: {} for m in MODELS}
    cls_dir = os.path.join(work, "classification")
    cls_counts = cls.prepare_classification(os.path.join(data, "corpus"), data, cls_dir, "en", lang,
                                            max_train=b.max_cls_train, log=say)
    parse_data = None
    if lang in PARSING_LANGS:
        parse_data = os.path.join(work, "parsing", "data")
        if not os.path.isfile(os.path.join(parse_data, "prepare.json")):
            run([os.path.join(BIN, "trelm-parse-prepare"), "--out", parse_data, "--vocab-dir", data,
                 "--lang", lang], os.path.join(work, "logs", "parse-prepare.log"), "treebank preparation")
    for model in MODELS:
        ck = checkpoints[model]
        runs = {"uas": [], "las": [], "cls_target": [], "cls_zeroshot": []}
        for s in seeds:
            if parse_data:
                m = finetune_parser(parse_data, ck, os.path.join(work, "parsing", model, f"seed{s}"), b, s)
                runs["uas"].append(m["uas"])
                runs["las"].append(m["las"])
            runs["cls_target"].append(finetune_classifier(
                os.path.join(cls_dir, "target"), ck, os.path.join(cls_dir, "runs", model, f"target-seed{s}"),
                b, s, train_lang_id=1, test_lang_id=1))
            runs["cls_zeroshot"].append(finetune_classifier(
                os.path.join(cls_dir, "zeroshot"), ck, os.path.join(cls_dir, "runs", model, f"zeroshot-seed{s}"),
                b, s, train_lang_id=0, test_lang_id=1))
        downstream[model] = {k: mean_std(v) for k, v in runs.items() if v}
    timings["downstream"] = time.time() - t0
    timings["total"] = time.time() - t_job

    report = {
        "lang": lang, "seeds": seeds, "budgets": asdict(b), "pretrain_budget_updates": b.pretrain_total,
        "pretraining": pretrain, "checkpoints": checkpoints, "downstream": downstream, "curves": curves,
        "time_to_quality": time_to_quality(curves, b.pretrain_total),
        "classification_data": cls_counts, "timings_seconds": timings,
        "prepare": read_json(os.path.join(data, "prepare.json")) if os.path.isfile(os.path.join(data, "prepare.json"))
        else None,
    }
    write_report(report, results)
    return report


def time_to_quality(curves: Dict, scratch_updates: int) -> Dict:
    """Updates TreLM needs to reach from-scratch's final target MLM loss, as a fraction."""
    if not curves.get("scratch"):
        return {"reached": False, "why": "no from-scratch validation points"}
    target = curves["scratch"][-1][1]
    for updates, loss in curves["trelm"]:
        if loss <= target:
            return {"reached": True, "scratch_final_loss": target, "trelm_updates": updates,
                    "scratch_updates": scratch_updates, "fraction": updates / scratch_updates}
    return {"reached": False, "scratch_final_loss": target, "trelm_best_loss": min(l for _, l in curves["trelm"])}


def _fmt(entry: Optional[Dict]) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}" if len(entry["runs"]) > 1 else f"{entry['mean']:.2f}"


def majority_note(counts: Optional[Dict]) -> str:
    """'; majority class X% of N paragraphs' for the target-language test split, if known."""
    test = ((counts or {}).get("target") or {}).get("test") or {}
    labels = test.get("labels") or {}
    if not labels:
        return ""
    n = sum(labels.values())
    label, top = max(labels.items(), key=lambda kv: kv[1])
    return f"; majority class ({label}) {100.0 * top / n:.1f}% of {n} test paragraphs"


def results_table(report: Dict) -> str:
    rows = ["| model | UAS | LAS | cls acc (target) | cls acc (zero-shot en→T) | pre-training updates | pre-training s |",
            "|---|---|---|---|---|---|---|"]
    for m in MODELS:
        d, p = report["downstream"].get(m, {}), report["pretraining"].get(m, {})
        rows.append(f"| {MODEL_TITLES[m]} | {_fmt(d.get('uas'))} | {_fmt(d.get('las'))} | "
                    f"{_fmt(d.get('cls_target'))} | {_fmt(d.get('cls_zeroshot'))} | {p.get('updates', 0)} | "
                    f"{p.get('seconds', 0):.0f} |")
    return "\n".join(rows)


def write_report(report: Dict, results: str) -> None:
    write_json(os.path.join(results, "results.json"), report)
    plot = plot_curves(report["curves"], os.path.join(results, "mlm_loss.png"), report["lang"])
    ttq = report["time_to_quality"]
    ttq_line = (f"TreLM reaches from-scratch's final target MLM loss ({ttq['scratch_final_loss']:.3f}) after "
                f"{ttq['trelm_updates']} updates = {ttq['fraction']:.3f} of from-scratch's {ttq['scratch_updates']}."
                if ttq.get("reached") else
                f"TreLM did not reach from-scratch's final target MLM loss ({ttq.get('scratch_final_loss')}); "
                f"its best was {ttq.get('trelm_best_loss')}.")
    stage_lines = []
    for m, p in report["pretraining"].items():
        for r in p["stages"]:
            stage_lines.append(f"| {m} | {r['stage']} {r['name']} | {r.get('updates')} | "
                               f"{r.get('valid_loss') if r.get('valid_loss') is not None else '-'} | "
                               f"{(r.get('seconds') or 0):.0f} |")
    md = [
        f"# TreLM transfer en → {report['lang']}: results",
        "",
        f"Seeds: {report['seeds']}. Budgets: `{json.dumps(report['budgets'])}`.",
        *[line for line in [vocab_line(report.get("prepare"))] if line],
        f"All pre-trained models get {report['pretrain_budget_updates']} updates (equal compute); "
        "the fine-tuning recipe is the same for every model.",
        "",
        results_table(report),
        "",
        ("UAS/LAS: test split of the fixed turkish-treebanks split, punctuation excluded, Eisner decoding. "
         if any("uas" in d for d in report["downstream"].values()) else
         f"No parsing: no treebank is packaged for {report['lang']}. ")
        + "Classification: accuracy (%) over 6 LibreOffice help modules on the target-language test split"
        + majority_note(report.get("classification_data")) + ".",
        "",
        "## Time to quality",
        "",
        ttq_line,
        "",
        f"![target validation MLM loss]({os.path.basename(plot)})" if plot else "",
        "",
        "## Pre-training stages",
        "",
        "Valid loss: fairseq's valid loss of the stage's own objective in bits, averaged per batch (the "
        "curve above weights by masked token, hence small differences). Stages 2a/2b: CdLM + MLM summed; "
        "stage 1: MLM on both languages; stage 4 and the baselines: target MLM.",
        "",
        "| model | stage | updates | valid loss | seconds |",
        "|---|---|---|---|---|",
        *stage_lines,
        "",
        "## Wall-clock (s)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in report["timings_seconds"].items()],
        "",
    ]
    with atomic_write(os.path.join(results, "results.md")) as f:
        f.write("\n".join(md))


def plot_curves(curves: Dict, path: str, lang: str) -> Optional[str]:
    import logging

    # before the import: importing matplotlib logs DEBUG lines when the root logger is at DEBUG
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, style in (("trelm", "o-"), ("scratch", "s-"), ("mlm_continued", "^--")):
        pts = curves.get(name) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=MODEL_TITLES[name], markersize=3)
    ax.set_xlabel("pre-training updates (all stages, cumulative)")
    ax.set_ylabel(f"{lang} validation MLM loss (bits/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def vocab_line(prepare: Optional[Dict]) -> str:
    """The report's sentence on the vocabulary: its size and how that size was chosen."""
    v = (prepare or {}).get("vocab") or {}
    if "vocab_size_rule" not in v:  # no prepare.json, or one written before sizes were recorded
        return f"Vocabulary: --vocab-size {v['vocab_size']}." if "vocab_size" in v else ""
    return (f"Vocabulary: {v['vocab_size']} sentencepiece pieces ({v.get('dict_symbols', '?')} fairseq symbols); "
            f"{v['vocab_size_rule']}.")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-demo",
        description="The main job: TreLM transfer of the embedded English model to a target language, "
        "baselines at equal compute, parsing + classification, results table.",
    )
    p.add_argument("--lang", default="tr", help="target language (default tr; parsing only for tr)")
    p.add_argument("--work", default=None, help="work directory (default runs/<lang>)")
    p.add_argument("--results", default=None, help="results directory (default results/<lang>)")
    p.add_argument("--cache-dir", default=None, help="download cache (default $TRELM_CACHE or ~/.cache/trelm_fairseq)")
    p.add_argument("--source-model", default=None, help="source model (default: all-MiniLM-L6-v2 from PyPI)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every update budget (e.g. 20+ on a GPU)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per model (make eval uses 3)")
    p.add_argument("--lr", type=float, default=Budgets.lr, help=f"pre-training learning rate (default {Budgets.lr})")
    p.add_argument("--finetune-lr", type=float, default=Budgets.finetune_lr,
                   help=f"parsing and classification fine-tuning learning rate (default {Budgets.finetune_lr})")
    p.add_argument("--max-tokens", type=int, default=Budgets.max_tokens, help="tokens per pre-training batch")
    p.add_argument("--vocab-size", type=vocab_size_arg, default=Budgets.vocab_size,
                   help="joint sentencepiece vocabulary: auto (default; sized to the corpus, at most 16000) or a "
                        "number of pieces, used exactly")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most N parallel training pairs")
    for name in ("stage1", "stage2", "stage4", "parse_updates", "cls_updates"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, dest=name,
                       help=f"updates (before --scale; default {getattr(Budgets, name)})")
    return p


@cli_errors
def cli_main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if args.scale <= 0 or args.seeds < 1:
        raise TreLMError("--scale must be > 0 and --seeds >= 1")
    args.work = args.work or os.path.join("runs", args.lang)
    args.results = args.results or os.path.join("results", args.lang)
    report = run_job(args)
    print()
    print(results_table(report))
    ttq = report["time_to_quality"]
    if ttq.get("reached"):
        print(f"\ntime to quality: {ttq['fraction']:.3f} of from-scratch's updates")
    print(f"\nreport: {os.path.join(args.results, 'results.md')}")


if __name__ == "__main__":
    cli_main()
