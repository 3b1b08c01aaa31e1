"""A fake fairseq-train for the stage-runner tests: cheap (torch only, no fairseq import).

Run as ``python tests/_stages_helpers.py <fairseq-train args>``.  It honours the flags the
runner relies on, the way fairseq-train does:

* ``--restore-file X`` (default ``checkpoint_last.pt`` = ``<save-dir>/checkpoint_last.pt``);
  with ``--reset-optimizer`` the update count restarts at 0, else it continues;
* ``--max-update N``: "trains" up to N updates;
* ``--stage S``: recorded in the saved checkpoint's ``cfg.task.stage`` (weights unchanged, so
  the frozen groups of 2a / 2b equal stage 1's and trelm-combine's parent check passes);
* prints json log lines like fairseq (``| train | {...}``, ``| valid | {...}``);
* writes ``checkpoint_last.pt`` and ``checkpoint_best.pt`` into ``--save-dir``.

Every call appends a record to ``$FAKE_CALLS`` (json lines).  ``FAKE_FAIL_STAGE=<stage>`` with
``FAKE_FAIL_AT=<n>`` stops that stage after n updates (checkpoint saved) and exits 3.
``FAKE_FAIL_MESSAGE`` is printed before that exit (e.g. fairseq's words for a diverged loss).
``FAKE_DIE_AFTER_SAVE=<stage>`` SIGKILLs the trainer right after it saved that stage's last
checkpoint, before its train line (fairseq's order), so that line never reaches the log.
``FAKE_SLEEP`` seconds are slept while "training" (to see 2a and 2b overlap).
``FAKE_SAVE_EVERY=<k>`` also writes ``checkpoint_1_<u>.pt`` every k updates (interval
checkpoints); ``FAKE_TRAIN_LOSS`` replaces the final train loss (e.g. an exploded one).
Like the plugin's tasks, the saved checkpoint's ``task_state`` records the dictionary
fingerprint (the restored checkpoint's) and ``--langs``.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.abspath(__file__)


def trainer_command():
    return [sys.executable, HERE]


def read_calls(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _main(argv):
    import torch
    from omegaconf import OmegaConf

    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--save-dir", required=True)
    p.add_argument("--restore-file", default="checkpoint_last.pt")
    p.add_argument("--reset-optimizer", action="store_true")
    p.add_argument("--reset-dataloader", action="store_true")
    p.add_argument("--reset-meters", action="store_true")
    p.add_argument("--max-update", type=int, required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--langs", default="en,tr")
    args, _ = p.parse_known_args(argv)
    t0 = time.time()

    if args.restore_file == "checkpoint_last.pt":
        path = os.path.join(args.save_dir, "checkpoint_last.pt")
    else:
        path = args.restore_file
    if not os.path.exists(path):
        # fairseq would silently train from scratch: make that a visible failure here
        print(f"fake: no checkpoint {path}", flush=True)
        return 4
    state = torch.load(path, map_location="cpu", weights_only=False)
    start = 0 if args.reset_optimizer else int(state["optimizer_history"][-1]["num_updates"])
    fail = os.environ.get("FAKE_FAIL_STAGE") == args.stage
    end = min(args.max_update, int(os.environ["FAKE_FAIL_AT"])) if fail else args.max_update
    for u in range(start + 1, end + 1):
        print(f"2026-01-01 00:00:00 | INFO | train_inner | " + json.dumps({"epoch": 1, "update": u, "loss": "9"}))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))

    cfg = state["cfg"]
    cfg = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)
    cfg["task"] = dict(cfg.get("task") or {}, _name="trelm_transfer", stage=args.stage, data=args.data)
    state["cfg"] = cfg
    state["optimizer_history"] = [{"criterion_name": "TreLMLoss", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {}, "num_updates": end}]
    meta = state.pop("trelm", None) or {}  # fairseq-train does not keep the trelm meta key ...
    stamp = dict(state.get("task_state") or {})  # ... its task stamps the task state instead
    if meta.get("dictionary_fingerprint"):
        stamp["dictionary_fingerprint"] = meta["dictionary_fingerprint"]
    state["task_state"] = dict(stamp, langs=args.langs.split(","))
    os.makedirs(args.save_dir, exist_ok=True)
    every = int(os.environ.get("FAKE_SAVE_EVERY", "0"))
    for u in range(start + 1, end + 1):
        if every and u % every == 0:
            interval = dict(state, optimizer_history=[{"num_updates": u}])
            torch.save(interval, os.path.join(args.save_dir, f"checkpoint_1_{u}.pt"))
    loss = float(os.environ.get("FAKE_TRAIN_LOSS", round(10.0 - 0.25 * end, 3)))
    # fairseq's order at the end of training: the valid line, the checkpoint save (with the
    # train meters and the valid loss in extra_state, in fairseq's own format), the train line
    print("2026-01-01 00:00:00 | INFO | valid | " + json.dumps(
        {"epoch": 1, "valid_loss": str(loss + 0.5), "valid_num_updates": str(end)}), flush=True)
    meters = [(200, "num_updates", "AverageMeter", {"val": end, "sum": 0, "count": 0, "round": None}),
              (0, "loss", "AverageMeter", {"val": loss, "sum": loss * 4, "count": 4, "round": 3})]
    state["extra_state"] = {"metrics": {"train": sorted(meters)}, "val_loss": loss + 0.5}
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        torch.save(state, os.path.join(args.save_dir, name))
    if os.environ.get("FAKE_DIE_AFTER_SAVE") == args.stage:
        os.kill(os.getpid(), 9)  # killed between the save and the train line
    print("2026-01-01 00:00:00 | INFO | train | " + json.dumps(
        {"epoch": 1, "train_loss": str(loss), "train_num_updates": str(end)}), flush=True)

    record = {"stage": args.stage, "restore": args.restore_file, "reset": args.reset_optimizer,
              "start_updates": start, "end_updates": end, "t0": t0, "t1": time.time(), "argv": argv}
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps(record) + "\n")
    if fail and os.environ.get("FAKE_FAIL_MESSAGE"):
        print(os.environ["FAKE_FAIL_MESSAGE"], flush=True)
    return 3 if fail else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
