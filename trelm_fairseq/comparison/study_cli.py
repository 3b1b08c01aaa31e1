"""The command line shared by the studies that run on the init study's finished runs
(experiments/stage4_variants.py, adversarial_candidates.py, zero_shot_*.py): the same options,
rows.json written as rows arrive (a study cut short keeps what it measured), report.md from
rows.json (so `--report-only` and scripts/figures.py regenerate it from the committed rows)."""
import argparse
import json
import os
from typing import Callable, Dict, List, Optional

from .. import fileio
from ..errors import TreLMError


def parser(doc: str, base_help: str = "the map arm's work dir (its classification/)") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", default="tr")
    p.add_argument("--base-work", required=True, help=base_help)
    p.add_argument("--work", required=True, help="init_methods.py's --work (its alignment/ arm)")
    p.add_argument("--out", required=True, help="where rows.json and report.md go")
    p.add_argument("--report-only", action="store_true", help="only regenerate report.md from rows.json")
    return p


def subset(p: argparse.ArgumentParser, option: str, value: str, allowed) -> List[str]:
    """The comma-separated ``value`` of ``option`` as a list; unknown names are a usage error."""
    chosen = [v for v in value.split(",") if v]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        p.error(f"{option}: unknown {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    return chosen


def rows_then_report(args, produce: Callable[[Callable[[List[Dict]], None]], Optional[List[Dict]]],
                     report: Callable[[Dict], str]) -> str:
    """Unless --report-only, ``produce(save)`` runs the study (``save(rows)`` writes rows.json;
    rows it returns are saved too); then report.md from rows.json.  Returns report.md's path."""
    out = os.path.abspath(args.out)
    rows_path = os.path.join(out, "rows.json")
    if not args.report_only:
        os.makedirs(out, exist_ok=True)

        def save(rows):
            fileio.write_json(rows_path, {"lang": args.lang, "rows": rows})

        rows = produce(save)
        if rows is not None:
            save(rows)
    if not os.path.exists(rows_path):
        raise TreLMError(f"{rows_path}: no rows yet (run the study without --report-only first)")
    with open(rows_path) as fh:
        record = json.load(fh)
    path = os.path.join(out, "report.md")
    fileio.write_text(path, report(record))
    return path
