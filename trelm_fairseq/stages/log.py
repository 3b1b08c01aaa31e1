"""Reading a stage's fairseq log: its last train / valid statistics and its last error line."""
import json
import re
from typing import Dict, Optional, Sequence

# the line a failing command ends with: our CLIs' "error: ..." or an exception's last line
ERROR_LINE = re.compile(r"^(error: .+|[A-Za-z_][\w.]*(Error|Exception)(: .*)?)$")


def parse_fairseq_log(lines: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Last end-of-epoch 'train' and last 'valid' stats of a fairseq log (json or simple format);
    the train stats' ``gflop_total`` sums the FLOP ledger's ``gflop`` over every end-of-epoch
    line (the stage's training FLOPs; a resumed stage: the epochs its log saw finish), and
    ``tokens_total`` the tokens trained on (fairseq's words per batch times the epoch's updates:
    input tokens of MLM parts, target tokens of CdLM parts)."""
    out: Dict[str, Dict[str, float]] = {}
    gflop_total, tokens_total, updates_before = 0.0, 0.0, 0.0
    for line in lines:
        for tag in ("train", "valid"):
            marker = f"| {tag} | "
            if marker not in line:
                continue
            body = line.split(marker, 1)[1].strip()
            stats = {}
            if body.startswith("{"):
                try:
                    raw = json.loads(body)
                except ValueError:
                    continue
                for k, v in raw.items():
                    k = k[len(tag) + 1:] if k.startswith(tag + "_") else k
                    stats[k] = v
            else:  # simple: "epoch 001 | valid on 'valid' subset | loss 9.1 | ..."
                for part in body.split(" | "):
                    bits = part.strip().rsplit(" ", 1)
                    if len(bits) == 2:
                        stats[bits[0]] = bits[1]
            parsed = {}
            for k, v in stats.items():
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    pass
            if "loss" in parsed:
                out[tag] = parsed
                if tag == "train" and "gflop" in parsed:  # not logged by other criterions
                    gflop_total += parsed["gflop"]
                    parsed["gflop_total"] = gflop_total
                if tag == "train" and "wpb" in parsed and "num_updates" in parsed:
                    tokens_total += parsed["wpb"] * (parsed["num_updates"] - updates_before)
                    updates_before = parsed["num_updates"]
                    parsed["tokens_total"] = tokens_total
    return out


def last_error(lines: Sequence[str]) -> Optional[str]:
    """The last error line of a log's tail (ERROR_LINE), if any."""
    errors = [line.strip() for line in lines if ERROR_LINE.match(line.strip())]
    return errors[-1] if errors else None
