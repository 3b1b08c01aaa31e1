"""Every quoted figure against its committed raw row (shared/DESIGN.md, "The evidence protocol").

Two ways a document ties a figure to its row, both checked here:

* **A figure link**: ``[0.138](../results/tr/results.json "prepare.mapping.precision_at_1.supervised.csls")``.
  The target is a committed JSON / JSONL file under results/ (relative to the document), the title
  says where the number is in it:

      [AGG:]PATH[ *SCALE]

  PATH is dot-separated keys and list indexes; ``[key=value,...]`` keeps the list items (JSONL:
  the rows) whose fields match.  Where the selection leaves several numbers, AGG (mean, std, min,
  max, n, sum) reduces them; without AGG it must leave exactly one.  SCALE multiplies (``*100``
  for a percentage).  The link text's first number is compared at the precision it is written
  with (``0.138``: three decimals; ``12,361``: an integer).

* **A generated block**: ``<!-- figures: GENERATOR ARG... -->`` ... ``<!-- /figures -->``; the
  lines between are what GENERATOR makes from its rows (GENERATORS below); ``--write`` puts them
  there.

And the experiments' reports that are generated from committed rows (REPORTS) are regenerated
and compared, and every relative link of the documents must name a file that exists.

    python scripts/figures.py           # check README.md and docs/ (exit 1 on any mismatch)
    python scripts/figures.py --write   # rewrite the generated blocks and reports
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+\.jsonl?)\s+\"([^\"]+)\"\)")
BLOCK = re.compile(r"(<!-- figures: (.+?) -->\n)(.*?)(<!-- /figures -->)", re.S)
RELATIVE_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
NUMBER = re.compile(r"[-−+]?\d[\d,]*(?:\.\d+)?")
AGGREGATES: Dict[str, Callable[[List[float]], float]] = {
    "mean": statistics.fmean, "std": lambda v: statistics.stdev(v) if len(v) > 1 else 0.0,
    "min": min, "max": max, "n": lambda v: float(len(v)), "sum": lambda v: float(sum(v))}


class FigureError(Exception):
    """A figure that does not match, or a reference that cannot be read."""


def load_rows(path: str):
    """A JSON file's object, or a JSONL file's rows as a list."""
    if not os.path.isfile(path):
        raise FigureError(f"{os.path.relpath(path, ROOT)}: no such file (is it committed?)")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def _split_path(path: str) -> List[str]:
    """'a.b[k=v].c.0' -> ['a', 'b', '[k=v]', 'c', '0']; a selector's values may hold dots."""
    parts, buf, depth = [], "", 0
    for ch in path:
        if ch == "[":
            if buf:
                parts.append(buf)
            buf, depth = "[", depth + 1
        elif ch == "]":
            parts.append(buf + "]")
            buf, depth = "", depth - 1
        elif ch == "." and not depth:
            if buf:
                parts.append(buf)
            buf = ""
        else:
            buf += ch
    if buf:
        parts.append(buf)
    return parts


def _matches(item, selector: str) -> bool:
    if not isinstance(item, dict):
        return False
    for cond in selector[1:-1].split(","):
        key, _, want = cond.partition("=")
        value = item
        for k in key.strip().split("/"):  # recipe/init: a nested field
            value = value.get(k) if isinstance(value, dict) else None
        if str(value) != want.strip():
            return False
    return True


def resolve(obj, path: str) -> List:
    """Every value PATH reaches in OBJ (a selector may keep several list items)."""
    values = [obj]
    for part in _split_path(path):
        nxt = []
        for v in values:
            if part.startswith("["):
                if not isinstance(v, list):
                    raise FigureError(f"'{part}' selects list items, but the value there is a {type(v).__name__}")
                nxt += [item for item in v if _matches(item, part)]
            elif isinstance(v, dict):
                if part not in v:
                    raise FigureError(f"no key '{part}' (there: {', '.join(sorted(map(str, v))[:12])})")
                nxt.append(v[part])
            elif isinstance(v, list) and re.fullmatch(r"-?\d+", part):
                nxt.append(v[int(part)])
            else:
                raise FigureError(f"cannot take '{part}' of a {type(v).__name__}")
        values = nxt
        if not values:
            raise FigureError(f"'{part}' matches nothing")
    return values


def figure_value(rows, spec: str) -> float:
    """The number a link's title names (module doc)."""
    spec = spec.strip()
    scale = 1.0
    m = re.fullmatch(r"(.*?)\s*\*\s*([0-9.eE+-]+)", spec)
    if m:
        spec, scale = m.group(1), float(m.group(2))
    agg = None
    m = re.fullmatch(r"(\w+):(.*)", spec)
    if m and m.group(1) in AGGREGATES:
        agg, spec = m.group(1), m.group(2)
    values = resolve(rows, spec)
    flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
    if agg is None:
        if len(flat) != 1:
            raise FigureError(f"'{spec}' gives {len(flat)} values; name an aggregate (mean:, n:, ...)")
        value = flat[0]
    else:
        if not all(isinstance(x, (int, float)) for x in flat):
            raise FigureError(f"'{spec}': {agg} over values that are not all numbers")
        value = AGGREGATES[agg]([float(x) for x in flat])
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise FigureError(f"'{spec}' is {json.dumps(value)[:60]}, not a number")
    return float(value) * scale


def shown_number(text: str) -> Tuple[float, int]:
    """The first number of a link text and its decimals."""
    m = NUMBER.search(text)
    if not m:
        raise FigureError(f"link text '{text}' holds no number")
    raw = m.group(0).replace(",", "").replace("−", "-")
    decimals = len(raw.split(".")[1]) if "." in raw else 0
    return float(raw), decimals


def check_link(doc: str, text: str, target: str, spec: str) -> Optional[str]:
    """None when the link's figure equals its row at the precision shown, else the problem."""
    path = os.path.normpath(os.path.join(os.path.dirname(doc), target))
    if not os.path.relpath(path, ROOT).startswith("results" + os.sep):
        return f"[{text}]({target}): figures link to committed rows under results/"
    try:
        shown, decimals = shown_number(text)
        value = figure_value(load_rows(path), spec)
    except FigureError as e:
        return f"[{text}]({target} \"{spec}\"): {e}"
    if math.isnan(value) or abs(round(value, decimals) - shown) > 0.5 * 10 ** -decimals + 1e-9:
        return f"[{text}]({target} \"{spec}\"): the row says {value:.{max(decimals, 1) + 2}f}, the text {text}"
    return None


# ----- generated blocks ---------------------------------------------------------------------

def _demo_table(doc: str, results_json: str) -> str:
    """The demo's table as the README shows it (results.md's first columns)."""
    sys.path.insert(0, ROOT)
    from trelm_fairseq.comparison.budgets import MODEL_TITLES, MODELS
    from trelm_fairseq.comparison.report import _fmt, _tflop

    report = load_rows(os.path.normpath(os.path.join(os.path.dirname(doc), results_json)))
    rows = ["| model | UAS | LAS | cls acc (target) | cls acc (zero-shot en→T) | cls probe (target) | "
            "cls probe (zero-shot) | pre-training updates | TFLOP |", "|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        d, p = report["downstream"].get(m, {}), report["pretraining"].get(m, {})
        rows.append(f"| {MODEL_TITLES[m]} | {_fmt(d.get('uas'))} | {_fmt(d.get('las'))} | {_fmt(d.get('cls_target'))} | "
                    f"{_fmt(d.get('cls_zeroshot'))} | {_fmt(d.get('probe_target'))} | {_fmt(d.get('probe_zeroshot'))} | "
                    f"{p.get('updates', 0)} | {_tflop(p.get('gflop') if p else 0.0).replace('-', '0')} |")
    return "\n".join(rows) + "\n"


def _report_table(doc: str, report_md: str, index: str) -> str:
    """The INDEX-th (1-based) table of a generated report, verbatim."""
    path = os.path.normpath(os.path.join(os.path.dirname(doc), report_md))
    if not os.path.isfile(path):
        raise FigureError(f"{report_md}: no such file")
    with open(path, encoding="utf-8") as f:
        tables, current = [], []
        for line in f:
            if line.startswith("|"):
                current.append(line)
            elif current:
                tables.append(current)
                current = []
        if current:
            tables.append(current)
    k = int(index)
    if not 1 <= k <= len(tables):
        raise FigureError(f"{report_md} has {len(tables)} tables, not {k}")
    return "".join(tables[k - 1])


def _paired_downstream(doc: str, results_json: str) -> str:
    """TreLM against each baseline downstream, paired over the runs that share their seeds."""
    sys.path.insert(0, ROOT)
    from trelm_fairseq.comparison.report import paired_downstream_lines

    report = load_rows(os.path.normpath(os.path.join(os.path.dirname(doc), results_json)))
    return "\n".join(paired_downstream_lines(report)).rstrip("\n") + "\n"


GENERATORS: Dict[str, Callable[..., str]] = {"demo-table": _demo_table, "report-table": _report_table,
                                             "paired-downstream": _paired_downstream}


def _experiment_report(script: str, func: str, *inputs: str) -> Callable[[], str]:
    def make() -> str:
        import importlib.util

        sys.path.insert(0, ROOT)
        spec = importlib.util.spec_from_file_location(func, os.path.join(ROOT, "experiments", script))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        args = [load_rows(os.path.join(ROOT, p)) for p in inputs]
        return getattr(module, func)(*args)
    return make


# committed reports that their experiment regenerates from committed rows (--report-only)
REPORTS: Dict[str, Callable[[], str]] = {
    "results/misaligned-pairs/report.md": _experiment_report(
        "misaligned_pairs.py", "report_from_files", "results/misaligned-pairs/variants.json",
        "results/misaligned-pairs/rows.json"),
    "results/finetune-depth/report.md": _experiment_report(
        "finetune_depth.py", "report", "results/finetune-depth/rows.json"),
    "results/baseline-lr/report.md": _experiment_report(
        "baseline_lr.py", "report", "results/baseline-lr/rows.json"),
    "results/init-methods-tr/report.md": _experiment_report(
        "init_methods.py", "report_from_files", "results/init-methods-tr/study.json",
        "results/init-methods-tr/init-rows.json", "results/init-methods-tr/rows.json"),
    "results/init-methods-de/report.md": _experiment_report(
        "init_methods.py", "report_from_files", "results/init-methods-de/study.json",
        "results/init-methods-de/init-rows.json", "results/init-methods-de/rows.json"),
    **{f"results/zero-shot-diagnosis-{lang}/report.md": _experiment_report(
        "zero_shot_diagnosis.py", "report_from_files", f"results/zero-shot-diagnosis-{lang}/rows.json")
       for lang in ("tr", "de")},
    "results/stage4-variants-tr/report.md": _experiment_report(
        "stage4_variants.py", "report_from_files", "results/stage4-variants-tr/rows.json"),
    **{f"results/adversarial-candidates-{lang}/report.md": _experiment_report(
        "adversarial_candidates.py", "report", f"results/adversarial-candidates-{lang}/rows.json")
       for lang in ("tr", "de")},
    **{f"results/zero-shot-finetune-{lang}/report.md": _experiment_report(
        "zero_shot_finetune.py", "report", f"results/zero-shot-finetune-{lang}/rows.json") for lang in ("tr", "de")},
}


# ----- the check ----------------------------------------------------------------------------

def documents(root: str = ROOT) -> List[str]:
    docs = [os.path.join(root, "README.md")]
    for base, _, files in os.walk(os.path.join(root, "docs")):
        docs += [os.path.join(base, f) for f in sorted(files) if f.endswith(".md")]
    return sorted(docs)


def check_document(doc: str, write: bool = False) -> Tuple[List[str], int]:
    """(problems, figures checked) of one document; ``write`` regenerates its blocks."""
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    rel = os.path.relpath(doc, ROOT)
    problems, checked = [], 0
    for m in LINK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        problem = check_link(doc, *m.groups())
        checked += 1
        if problem:
            problems.append(f"{rel}:{line}: {problem}")

    figure_spans = [m.span() for m in LINK.finditer(text)]  # checked above, with their rows
    for m in RELATIVE_LINK.finditer(text):
        if any(a <= m.start() < b for a, b in figure_spans):
            continue
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and \
                not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(doc), target))):
            problems.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: link to {target}: no such file")

    def regenerate(m) -> str:
        nonlocal checked
        line = text.count("\n", 0, m.start()) + 1
        name, *args = m.group(2).split()
        checked += 1
        if name not in GENERATORS:
            problems.append(f"{rel}:{line}: unknown generator '{name}' (known: {', '.join(GENERATORS)})")
            return m.group(0)
        try:
            fresh = GENERATORS[name](doc, *args)
        except (FigureError, OSError, KeyError, ValueError) as e:
            problems.append(f"{rel}:{line}: {m.group(2)}: {e}")
            return m.group(0)
        if fresh != m.group(3) and not write:
            problems.append(f"{rel}:{line}: the block '{m.group(2)}' differs from what its rows give "
                            f"(python scripts/figures.py --write regenerates it)")
        return m.group(1) + fresh + m.group(4)

    new = BLOCK.sub(regenerate, text)
    if write and new != text:
        with open(doc + ".tmp", "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(doc + ".tmp", doc)
    return problems, checked


def check_reports(write: bool = False) -> Tuple[List[str], int]:
    problems = []
    for rel, make in REPORTS.items():
        path = os.path.join(ROOT, rel)
        try:
            fresh = make()
        except FigureError as e:
            problems.append(f"{rel}: {e}")
            continue
        with open(path, encoding="utf-8") as f:
            same = f.read() == fresh
        if not same and write:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(fresh)
            os.replace(path + ".tmp", path)
        elif not same:
            problems.append(f"{rel}: differs from what its rows give (python scripts/figures.py --write)")
    return problems, len(REPORTS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the generated blocks and reports")
    p.add_argument("docs", nargs="*", help="documents to check (default: README.md and docs/)")
    args = p.parse_args(argv)
    problems, checked = check_reports(args.write) if not args.docs else ([], 0)
    for doc in [os.path.abspath(d) for d in args.docs] or documents():
        found, n = check_document(doc, args.write)
        problems += found
        checked += n
    for line in problems:
        print(line)
    print(f"figures: {checked} checked (links, generated blocks, reports), {len(problems)} wrong", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
