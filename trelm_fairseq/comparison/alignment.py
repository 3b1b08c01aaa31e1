"""Probes that need no fine-tuning (trelm_fairseq.probes) for every pre-trained model: bitext
retrieval P@1 and the language-ID probe on the held-out valid pairs, and target MLM, for the
mapped init, TreLM after every stage, and each baseline's final checkpoint.  The test pairs are
scored once per final model (``row["test"]``), after every choice: valid decides, test reports
(shared/DESIGN.md, "The evidence protocol").

One --tokens-per-sample for all (the training runs'), so the checkpoints see the same
sentences; each result is cached as json under <work>/probes, so a re-run only probes what
it has not."""
import os
import time
from typing import Dict, List

from ..fileio import cached_json_of_file
from .commands import say
from .curves import PROBED_CURVE_POINTS


def probe_points(plans: Dict, init: str) -> List[Dict]:
    """What is probed, in schedule order: model, point (and its file-name key), checkpoint,
    cumulative pre-training updates."""
    tp = plans["trelm"]
    u1, u2, u4 = tp.budget("1"), tp.budget("2a"), tp.budget("4")
    points = [("trelm", "init", "mapped init", init, 0)]
    for stage, key, point, updates in (("1", "1", "after 1", u1), ("2a", "2a", "after 2a", u1 + u2),
                                       ("2b", "2b", "after 2b", u1 + 2 * u2),
                                       ("3", "combine", "after combine", u1 + 2 * u2),
                                       ("4", "final", "final", u1 + 2 * u2 + u4)):
        points.append(("trelm", key, point, tp.stages[stage].output_checkpoint(), updates))
    for name in ("scratch", "mlm_continued"):
        points.append((name, "final", "final", plans[name].stages["1"].output_checkpoint(), plans[name].budget("1")))
    return [dict(model=m, key=k, point=p, checkpoint=c, updates=u) for m, k, p, c, u in points]


def run_probes(plans: Dict, init: str, data: str, lang: str, work: str, valid_sample: int = 0) -> List[Dict]:
    """Every probe of every point of probe_points; the rows (the point's fields + the probe's),
    at TreLM's PROBED_CURVE_POINTS with the target MLM on the runs' --valid-sample sentences too
    (curves.py).
    A cached result counts only for the checkpoint bytes and the valid sample it was computed on."""
    from ..probes import format_row, probe_checkpoint

    tps = plans["trelm"].sample_tokens()
    rows = []
    for p in probe_points(plans, init):
        t0 = time.time()
        # the sample figure only where it is a curve point: the other points have their own validations
        sample = valid_sample if p["model"] == "trelm" and p["key"] in PROBED_CURVE_POINTS else 0
        r = cached_json_of_file(os.path.join(work, "probes", f"{p['model']}-{p['key']}.valid.json"), p["checkpoint"],
                                lambda p=p, sample=sample: probe_checkpoint(
                                    p["checkpoint"], data, ["en", lang], split="valid", max_pairs=1000,
                                    tokens_per_sample=tps, valid_sample=sample), "probe record",
                                valid=lambda record, sample=sample: record.get("valid_sample", 0) == sample)
        row = dict(p, **{k: v for k, v in r.items() if k not in ("checkpoint", "source_sha256")})
        if p["key"] == "final":  # the report's test figure: scored once, picks nothing
            t = cached_json_of_file(os.path.join(work, "probes", f"{p['model']}-final.test.json"), p["checkpoint"],
                                    lambda p=p: probe_checkpoint(p["checkpoint"], data, ["en", lang], split="test",
                                                                 max_pairs=1000, tokens_per_sample=tps,
                                                                 target_mlm=False), "probe record")
            row["test"] = {k: t[k] for k in ("split", "pairs", "lower", "top")}
        rows.append(row)
        say(format_row(f"{p['model']} {p['point']} (valid)", r) + f"  [{time.time() - t0:.0f}s]")
    return rows
