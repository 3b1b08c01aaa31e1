"""Running a plan's stages: one stage (``run_stage``: skip, start or resume, then its marker),
a whole plan on the scheduler (``run_all``), the failure advice, the summary (stages.json)."""
import math
import os
import shlex
import time
from typing import Callable, Dict, List, Optional

from ..layout import StageDir
from ..divergence import DEFAULT_MAX_TRAIN_LOSS, DIVERGED_RE, first_diverged_checkpoint
from ..errors import TreLMError
from ..fileio import FolderBusy, cached_json, exclusive, make_dirs, run_logged, write_json
from ..scheduler import Node, printer, run_threads
from .log import last_error, parse_fairseq_log
from .plan import MARKER_WHAT, SUMMARY, Stage, StagePlan, _updates_of, check_checkpoint_fits


class StageFailed(TreLMError):
    """A stage's command exited non-zero; its checkpoints stay for a resume."""


# fairseq's words for failures a plain rerun would only repeat, and what to change instead
_DIVERGED = ("FloatingPointError", "gradients are Nan/Inf", "Minimum loss scale reached")
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "OutOfMemoryError")


def _what_to_do(stage: Stage) -> str:
    """The advice for a failed training stage, from the end of its log."""
    try:
        with open(stage.log_path, encoding="utf-8", errors="replace") as f:
            tail = f.readlines()[-200:]
    except OSError:
        tail = []
    text = "".join(tail)
    resume = "Run again to resume from the stage's checkpoint_last.pt"
    from ..checkpoint import checkpoint_num_updates

    diverged = DIVERGED_RE.search(text)
    if diverged or any(word in text for word in _DIVERGED):
        return _set_aside_diverged(stage, int(diverged.group(1)) if diverged else None)
    saved = checkpoint_num_updates(stage.last_checkpoint) if os.path.isfile(stage.last_checkpoint) else None
    if saved is not None:
        resume += f" (update {saved})"
    if any(word in text for word in _OUT_OF_MEMORY):
        return "It ran out of memory: lower --max-tokens (raise --update-freq to keep the batch), then run again. " \
               + resume + "."
    error = last_error(tail)
    cause = f"Its last error: {error[:500]} " if error else ""
    return cause + resume + "."


def _set_aside_diverged(stage: Stage, update: Optional[int]) -> str:
    """After a divergence at `update` (None: fairseq's words without ours, so unknown): the
    checkpoints of diverged weights go to the stage's diverged/ folder, never to be resumed;
    what was done and what to change, in trelm-stages' own flags."""
    from ..checkpoint import DIVERGED_FOLDER, set_aside_diverged

    first_bad = first_diverged_checkpoint(update) if update is not None else None
    moved, sane = set_aside_diverged(stage.dir, first_bad)
    at = f" at update {update}" if update is not None else " (update unknown: every checkpoint counts as diverged)"
    text = f"The training loss diverged{at}: a rerun with the same settings would repeat it."
    if moved:
        text += (f" The {len(moved)} checkpoint(s) saved from the diverged weights are set aside in "
                 f"{os.path.join(stage.dir, DIVERGED_FOLDER)} and will not be resumed.")
    if sane is not None:
        text += f" The last sane checkpoint, {sane[1]} (update {sane[0]}), is where the next run resumes."
    else:
        text += " No checkpoint was saved before it: the next run starts the stage over."
    return text + (" Lower the learning rate (trelm-stages --lr) or give the stage more warm-up (trelm-stages "
                   "--warmup), then run again.")


def _run_command(stage: Stage, cmd: List[str], say: Callable[[str], None], echo: bool) -> int:
    on_line = (lambda line: say(f"[{stage.key}] {line}")) if echo else None
    rc, _ = run_logged(cmd, stage.log_path, on_line, keep_output=False)
    return rc


def _check_ready(stage: Stage) -> None:
    if not stage.spec.parents:
        if not os.path.isfile(stage.plan.init):
            raise TreLMError(f"stage {stage.key} starts from {stage.plan.init}, which does not exist "
                             "(run trelm-prepare)")
        return
    for p in stage.parents:
        if not p.done():
            raise TreLMError(
                f"stage {stage.key} ({stage.name}) needs stage {p.key} ({p.name}) finished first: "
                f"{p.marker_path} is missing"
            )
    start = stage.start_checkpoint()
    if stage.state() == "start" and not os.path.isfile(start):
        raise TreLMError(f"stage {stage.key} starts from {start}, which does not exist")


def stage_record(stage: Stage) -> Dict:
    """One row of the summary (from the marker when the stage is finished); its checkpoint
    is a path under the run directory as it is now."""
    m = stage.marker()
    row = {"stage": stage.key, "name": stage.name, "status": stage.state()}
    if m is not None:
        for k in ("updates", "train_loss", "valid_loss", "seconds", "gflop", "tokens"):
            row[k] = m.get(k)
        row["checkpoint"] = stage.output_checkpoint()
    else:
        row.update(updates=None, train_loss=None, valid_loss=None, seconds=None, gflop=None, tokens=None,
                   checkpoint=None)
    row["planned_updates"] = stage.updates if stage.is_training else None
    return row


def run_stage(plan: StagePlan, key: str, log: Callable[[str], None] = print, echo: bool = True) -> Dict:
    """Run (or skip, or resume) one stage; returns its marker record.  The marker, written
    when the stage finishes, is what makes it finished (fileio.cached_json)."""
    stage = plan.stages[key]
    say = printer(log)
    if stage.done():
        _say_finished(stage, say)
        return stage.marker()
    with exclusive(stage.dir, f"trelm-stages stage {key} ({stage.name})"):  # one writer per stage folder
        return cached_json(stage.marker_path, lambda: _execute(stage, say, echo), None, *MARKER_WHAT)


def _say_finished(stage: Stage, say) -> None:
    m = stage.marker()
    if stage.is_training and m.get("planned_updates") not in (None, stage.updates):
        say(f"== stage {stage.key} ({stage.name}): finished with {m.get('updates')} updates (planned now: "
            f"{stage.updates}); delete {stage.marker_path} to continue it to the new budget, "
            f"or {stage.dir} to redo it")
    else:
        say(f"== stage {stage.key} ({stage.name}): finished, skipping")


def _check_start(stage: Stage, state: str, say) -> None:
    """Before (re)starting: a damaged checkpoint_last.pt recovered, the checkpoint to load
    checked against the model the command builds."""
    key = stage.key
    if state == "resume":
        from ..checkpoint import recover_last_checkpoint

        try:
            recovered = recover_last_checkpoint(stage.last_checkpoint)
        except TreLMError as e:
            raise TreLMError(f"stage {key} ({stage.name}): {e}") from None
        if recovered:
            say(f"== stage {key} ({stage.name}): {recovered}")
    if stage.is_training:
        if state == "resume":
            check_checkpoint_fits(stage.plan, stage.last_checkpoint, f"stage {key}'s own checkpoint to resume")
        else:
            check_checkpoint_fits(stage.plan, stage.start_checkpoint(), f"where stage {key} starts")


def _execute(stage: Stage, say, echo: bool) -> Dict:
    """Start or resume a stage that is not finished; its marker record."""
    key, state = stage.key, stage.state()
    _check_ready(stage)
    t0 = time.time()
    _check_start(stage, state, say)
    done_updates = _updates_of(stage.last_checkpoint) if state == "resume" else 0
    if state == "resume" and done_updates >= stage.updates:
        # trained to the budget but the marker was not written (killed right after the last save)
        say(f"== stage {key} ({stage.name}): {stage.last_checkpoint} already has {done_updates} updates; "
            "marking it finished")
    elif not stage.is_training:
        up, low, parent = stage.combine_inputs()
        say(f"== stage {key} ({stage.name}): lower half from {low}, upper half from {up} (parent {parent})")
        say(f"   $ {shlex.join(stage.command(state))}")
        _run_combine(stage, up, low, parent, say, echo)
    else:
        where = (f"resuming from {stage.last_checkpoint} ({done_updates} updates)" if state == "resume"
                 else f"starting from {stage.start_checkpoint()}")
        say(f"== stage {key} ({stage.name}): {where}")
        cmd = stage.command(state)
        say(f"   $ {shlex.join(cmd)}")
        rc = _run_command(stage, cmd, say, echo)
        if rc != 0:
            raise StageFailed(f"stage {key} ({stage.name}) failed: {cmd[0]} exited {rc}; see {stage.log_path}. "
                              + _what_to_do(stage))
    seconds = time.time() - t0
    record = _finish(stage, state, seconds)
    if stage.is_training:
        loss = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        say(f"== stage {key} ({stage.name}) done in {seconds:.1f}s: {record['updates']} updates, "
            f"train loss {loss(record['train_loss'])}, valid loss {loss(record['valid_loss'])}")
    else:
        say(f"== stage {key} ({stage.name}) done in {seconds:.1f}s: {record['checkpoint']}")
    return record


def _run_combine(stage: Stage, upper: str, lower: str, parent: str, say, echo: bool) -> None:
    """Stage 3 in this process (same code as trelm-combine, without another interpreter start)."""
    from ..combine import combine

    os.makedirs(stage.dir, exist_ok=True)
    with open(stage.log_path, "a", encoding="utf-8") as logf:
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(stage.command('start'))}\n")

        def log(msg):
            logf.write(msg + "\n")
            if echo:
                say(f"[{stage.key}] {msg}")

        try:
            combine(upper, lower, stage.last_checkpoint, parent_path=parent, log=log,
                    average=stage.plan.combine_average)
        except TreLMError as e:
            logf.write(f"=== error: {e}\n")
            raise StageFailed(f"stage {stage.key} ({stage.name}) failed: {e}") from None


def _final_stats(stage: Stage, updates: int) -> Dict[str, Dict[str, float]]:
    """The stage log's last train and valid stats (parse_fairseq_log).  A run killed between
    fairseq's last checkpoint save and its last lines reaching the log (fairseq prints the
    epoch's train line after that save) leaves a log that stops short of the checkpoint: the
    missing lines are then rebuilt from what the checkpoint saved (checkpoint.saved_log_lines)
    and appended to the log under a note, so that log and marker agree with an uninterrupted run."""
    lines: List[str] = []
    if os.path.isfile(stage.log_path):
        with open(stage.log_path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    stats = parse_fairseq_log(lines)
    missing = [tag for tag in ("valid", "train") if stats.get(tag, {}).get("num_updates") != updates]
    if not missing:
        return stats
    from ..checkpoint import saved_log_lines

    saved = [line for line in saved_log_lines(stage.last_checkpoint)
             if any(f"| {tag} | " in line for tag in missing)]
    if not saved:
        return stats
    with open(stage.log_path, "a", encoding="utf-8") as f:
        f.write(f"=== the {' and '.join(missing)} stats of update {updates} never reached this log (the run was "
                f"stopped after its last save); rebuilt from {os.path.basename(stage.last_checkpoint)}:\n")
        f.writelines(line + "\n" for line in saved)
    return parse_fairseq_log(lines + saved)


def _finish(stage: Stage, state: str, seconds: float) -> Dict:
    """Check the outputs; the marker record that makes the stage finished (run_stage writes it)."""
    last = stage.last_checkpoint
    if not os.path.isfile(last):
        raise StageFailed(f"stage {stage.key} ({stage.name}) exited 0 but wrote no {last}")
    record = {"stage": stage.key, "name": stage.name, "seconds": round(seconds, 2),
              "resumed": state == "resume", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if stage.is_training:
        best = StageDir(stage.dir).best
        use_best = stage.plan.restore_from == "best" and os.path.isfile(best)
        updates = _updates_of(last)
        stats = _final_stats(stage, updates)
        record.update(
            checkpoint=stage.plan.relative(best if use_best else last),
            last_checkpoint=stage.plan.relative(last),
            best_checkpoint=stage.plan.relative(best) if os.path.isfile(best) else None,
            updates=updates,
            planned_updates=stage.updates,
            train_loss=stats.get("train", {}).get("loss"),
            valid_loss=stats.get("valid", {}).get("loss"),
            gflop=stats.get("train", {}).get("gflop_total"),
            tokens=stats.get("train", {}).get("tokens_total"),
            train=stats.get("train"),
            valid=stats.get("valid"),
        )
        _check_not_diverged(stage, record["train_loss"], updates)
    else:
        record.update(checkpoint=stage.plan.relative(last), updates=None, train_loss=None, valid_loss=None,
                      parents={p.key: stage.plan.relative(p.output_checkpoint()) for p in stage.parents})
    return record


def _max_train_loss(stage: Stage) -> float:
    """The stage command's --max-train-loss (the task's default unless passed through)."""
    args = list(stage.plan.extra_args) + list(stage.plan.stage_args.get(stage.key, []))
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-train-loss=") else \
            (args[i + 1] if arg == "--max-train-loss" and i + 1 < len(args) else None)
        if value is not None:
            return float(value)
    return DEFAULT_MAX_TRAIN_LOSS


def _check_not_diverged(stage: Stage, train_loss: Optional[float], updates: int) -> None:
    """A stage whose final train loss is non-finite or exploded is not marked done (a run that
    resumed a diverged checkpoint written before fairseq-train stopped on divergence)."""
    limit = _max_train_loss(stage)
    if train_loss is None or (math.isfinite(train_loss) and not (limit and train_loss > limit)):
        return
    raise StageFailed(f"stage {stage.key} ({stage.name}) ended with a train loss of {train_loss:.3g} bits per token "
                      f"at update {updates} (limit {limit:g}): it diverged and is not marked done. "
                      + _set_aside_diverged(stage, None))


def write_summary(plan: StagePlan) -> List[Dict]:
    rows = [stage_record(s) for s in plan.stages.values()]
    write_json(os.path.join(plan.out, SUMMARY), {"plan": plan.to_dict(), "stages": rows})
    return rows


def format_table(rows: List[Dict]) -> str:
    def fmt(v, spec="{:.3f}"):
        return "-" if v is None else spec.format(v)

    lines = [f"{'stage':<6}{'name':<19}{'status':<8}{'updates':>8}{'train_loss':>12}{'valid_loss':>12}{'seconds':>10}"
             f"{'TFLOP':>10}"]
    for r in rows:
        tflop = None if r.get("gflop") is None else r["gflop"] / 1e3
        lines.append(
            f"{r['stage']:<6}{r['name']:<19}{r['status']:<8}{fmt(r['updates'], '{:d}'):>8}"
            f"{fmt(r['train_loss']):>12}{fmt(r['valid_loss']):>12}{fmt(r['seconds'], '{:.1f}'):>10}"
            f"{fmt(tflop, '{:.2f}'):>10}"
        )
    return "\n".join(lines)


def _check_selection(plan: StagePlan, keys: List[str]) -> None:
    """Every selected stage's parents are finished or selected (before it)."""
    for key in keys:
        for p in plan.specs[key].parents:
            if p not in keys and not plan.stages[p].done():
                raise TreLMError(
                    f"--stages: stage {key} needs stage {p} ({plan.specs[p].name}), which is neither "
                    "finished nor selected"
                )


def _quiet_events(say: Callable[[str], None]) -> Callable[[str], None]:
    """The scheduler's event lines minus start / done / failed (run_stage prints its own
    and the error is raised); skips are kept."""
    def event(line: str) -> None:
        if not line.startswith(("-> ", "<- ", "!! ")):
            say(line)
    return event


def run_all(
    plan: StagePlan,
    stages: Optional[str] = None,
    parallel: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    echo: bool = True,
) -> List[Dict]:
    """Run the selected stages in order (2a and 2b at once with ``parallel``); returns the summary rows."""
    keys = plan.select(stages)
    say = printer(log)
    if dry_run:
        for key in keys:
            stage = plan.stages[key]
            state = stage.state()
            if state == "done":
                say(f"# stage {key} ({stage.name}): finished, would skip")
                continue
            say(f"# stage {key} ({stage.name}): would {state}")
            say(shlex.join(stage.command(state)))
        return [stage_record(plan.stages[k]) for k in keys]

    _check_selection(plan, keys)
    make_dirs(plan.out)  # a read-only or full disk: one clear error before anything runs
    say(f"trelm-stages: {', '.join(f'{k} ({plan.specs[k].name})' for k in keys)} -> {plan.out}")
    t0 = time.time()
    failures: Dict[str, BaseException] = {}
    entered: List[str] = []  # stages this process got to run (not refused as held by another)

    def work(node: Node) -> None:
        try:
            run_stage(plan, node.id, say, echo)
        except FolderBusy as e:  # another live run holds it: its summary is that run's to write
            failures[node.id] = e
            raise
        except BaseException as e:  # kept to re-raise as it was (StageFailed, TreLMError, ...)
            failures[node.id] = e
            entered.append(node.id)
            raise
        entered.append(node.id)
        write_summary(plan)

    # the sweep's scheduler over this plan's graph: a stage starts when its selected parents
    # finished; with `parallel`, 2a and 2b (both children of stage 1) train at once; nothing
    # new starts after a failure (rerun to resume)
    nodes = [Node(k, [p for p in plan.specs[k].parents if p in keys]) for k in keys]
    try:
        run_threads(nodes, work, max_parallel=2 if parallel else 1, say=_quiet_events(say), keep_going=False)
    finally:
        rows = [stage_record(s) for s in plan.stages.values()]
        try:
            rows = write_summary(plan) if entered else rows
        except TreLMError as e:
            if not failures:
                raise
            # the disk that failed the stage (e.g. full) fails the summary too: the stage's own
            # error, raised below, names what failed first
            say(f"(the summary was not updated: {e})")
        say(format_table(rows))
        say(f"total {time.time() - t0:.1f}s; summary in {os.path.join(plan.out, SUMMARY)}")
    for key in keys:  # the first failed stage's own error, as a direct run_stage would raise it
        if key in failures:
            raise failures[key]
    return rows
