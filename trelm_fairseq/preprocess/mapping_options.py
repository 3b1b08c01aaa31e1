"""The options of the embedding-mapping step, shared by trelm-map-embeddings (cli/) and
trelm-prepare, which runs the step with the user's --map-args; `main(argv)` parses and runs."""
import argparse
from typing import Dict, List, Optional

from . import alignment_init, muse, wechsel
from .embedding_mapping import PROG, run
from .init_checkpoint import MAPPING_METHODS, OUTPUT_BIASES, SCHEMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Initialise the new joint vocabulary's embeddings (copy the tokens the old vocabulary "
                    "has, map the others: fastText vectors + a linear map into the source embedding space, "
                    "supervised by the shared tokens or MUSE-adversarial) and write the initialised TreLM "
                    "checkpoint (<data>/init/model.pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source-model", required=True, metavar="DIR",
                   help="source model directory with model.pt + dict.txt (e.g. from trelm-import)")
    p.add_argument("--data", required=True, metavar="DATA", help="data directory; reads DATA/dict.txt")
    p.add_argument("--text", nargs="+", metavar="FILE", default=None,
                   help="tokenized training text of both languages (space-separated pieces, one sentence a "
                        "line); required unless --no-mapping")
    p.add_argument("--out", metavar="PATH", default=None, help="output checkpoint (default DATA/init/model.pt)")
    p.add_argument("--method", choices=MAPPING_METHODS, default="supervised",
                   help="how new tokens are initialised: a linear map from fastText space into the source "
                        "embeddings, supervised by the shared tokens or MUSE-adversarial; or focus (FOCUS-style: a "
                        "sparsemax-weighted combination of shared tokens' source rows by fastText similarity); or "
                        "wechsel (WECHSEL: a softmax-weighted mix of the source rows nearest to the token's "
                        "vector under the supervised map); or alignment (trans-tokenization: the link-weighted "
                        "mean of the source rows each new token is word-aligned to in --align-text, the "
                        "supervised map for tokens without links)")
    p.add_argument("--output-bias", choices=OUTPUT_BIASES, default="zero",
                   help="the LM head's output bias: zero, or unigram (every piece's log-frequency in "
                        "--target-text: the init's target MLM starts near a unigram model's instead of worse "
                        "than uniform)")
    p.add_argument("--target-text", metavar="FILE", default=None,
                   help="tokenized target-language training text (pieces), for --output-bias unigram")
    p.add_argument("--evaluate-both", action="store_true",
                   help="also run and evaluate another method (adversarial <-> supervised; focus, wechsel: "
                        "supervised)")
    p.add_argument("--no-mapping", action="store_true",
                   help="ablation: new tokens get N(0, source std) rows instead of mapped vectors")
    p.add_argument("--scheme", choices=SCHEMES, default="auto",
                   help="token correspondence: wordpiece ('▁word'<->'word', 'ing'<->'##ing') or identical")
    p.add_argument("--tri-layer-position", type=int, default=-1,
                   help="layers below the TRILayer; -1 = N/2")
    p.add_argument("--tri-layer-copy", choices=("upper", "lower"), default="upper",
                   help="the TRILayer starts as a copy of the first upper layer (upper, the authors' choice) or "
                        "of the last lower layer (lower, the previous default)")
    p.add_argument("--target-lang-std", type=float, default=0.0,
                   help="std of the noise added to the target-language embedding row (a copy of row 0)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of fastText, the held-out split, the mapping and the random rows; the same seed "
                        "gives the same init/model.pt only with one fastText thread (--deterministic)")
    p.add_argument("--threads", type=int, default=2,
                   help="fastText and torch threads; with more than 1, fastText's lock-free (Hogwild) updates make "
                        "every run's vectors, and so the mapped rows of init/model.pt, differ slightly (measured "
                        "max abs 0.24-0.34 between two 2-thread runs)")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible output: fastText (and torch) on 1 thread, so the same inputs and --seed "
                        "give a byte-identical init/model.pt (slower fastText step); overrides --threads")
    p.add_argument("--device", default="cpu",
                   help="torch device for the mapping (e.g. cuda; fastText always runs on the CPU)")
    p.add_argument("--report-json", metavar="PATH", default=None, help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_fasttext_options(p.add_argument_group("fastText skip-gram"))
    _add_mapping_options(p.add_argument_group("mapping"))
    return p


def _add_fasttext_options(g) -> None:
    g.add_argument("--ft-epochs", type=int, default=5, help="fastText training epochs over the text")
    g.add_argument("--ft-min-count", type=int, default=3, help="pieces seen fewer times get n-gram vectors only "
                   "and are left out of the mapping dictionaries")
    g.add_argument("--ft-minn", type=int, default=3, help="min character n-gram (0 with --ft-maxn 0: none)")
    g.add_argument("--ft-maxn", type=int, default=6, help="max character n-gram")
    g.add_argument("--ft-lr", type=float, default=0.05, help="fastText learning rate")
    g.add_argument("--ft-window", type=int, default=5, help="fastText context window (pieces each side)")
    g.add_argument("--ft-neg", type=int, default=5, help="fastText negative samples per positive")
    g.add_argument("--save-vectors", metavar="PATH", default=None, help="write the fastText vectors (.npz)")
    g.add_argument("--load-vectors", metavar="PATH", default=None,
                   help="reuse vectors written by --save-vectors instead of training fastText")


def _add_mapping_options(g) -> None:
    g.add_argument("--focus-temperature", type=float, default=1.0,
                   help="--method focus: cosine similarities are divided by this before sparsemax (1: FOCUS's "
                        "rule; lower: fewer shared tokens per new token)")
    g.add_argument("--wechsel-k", type=int, default=wechsel.K,
                   help="--method wechsel: source rows mixed into each new token (its nearest ones; WECHSEL: 10)")
    g.add_argument("--wechsel-temperature", type=float, default=wechsel.TEMPERATURE,
                   help="--method wechsel: cosine similarities are divided by this before the softmax over the "
                        "k nearest (WECHSEL: 0.1; lower: the nearest row dominates)")
    g.add_argument("--align-text", nargs="+", metavar="FILE", default=None,
                   help="--method alignment: SRC_TEXT TGT_PIECES [SRC_PIECES], the parallel training pairs, one "
                        "pair a line: English as text (tokenised here by the source model's tokenizer), the "
                        "target side as pieces and optionally the English side as pieces (links the English-only "
                        "pieces of the joint vocabulary too); a prepared DATA has work/text/para.train.<S> "
                        "work/tok/para.train.<T> work/tok/para.train.<S>")
    g.add_argument("--alignment-temperature", type=float, default=alignment_init.TEMPERATURE,
                   help="--method alignment: link counts are raised to 1/T before averaging (1: the plain "
                        "count-weighted mean; lower: the most linked source token dominates)")
    g.add_argument("--alignment-top-k", type=int, default=alignment_init.TOP_K,
                   help="--method alignment: average only each token's k most linked source tokens (0: all)")
    g.add_argument("--alignment-min-links", type=int, default=alignment_init.MIN_LINKS,
                   help="--method alignment: tokens with fewer links keep the supervised map's row")
    g.add_argument("--heldout", type=float, default=0.15,
                   help="fraction of shared tokens held out of all dictionaries to measure precision@1")
    g.add_argument("--csls-k", type=int, default=10,
                   help="neighbourhood size of CSLS (cross-domain similarity local scaling) retrieval")
    g.add_argument("--max-rank", type=int, default=5000,
                   help="most frequent rows used for induced dictionaries, the model-selection criterion and "
                        "the CSLS neighbourhoods of the evaluation (0 = all; cost grows with its square)")
    g.add_argument("--sup-solver", choices=muse.SOLVERS, default="lstsq",
                   help="supervised map: unconstrained linear least squares (ridge) or orthogonal Procrustes "
                        "(MUSE's choice; assumes isomorphic spaces, measured much worse from fastText to a "
                        "PrLM's input embeddings, see the module docstring)")
    g.add_argument("--ridge", type=float, default=0.01, help="ridge penalty of the lstsq solver")
    g.add_argument("--sup-refine-iterations", type=int, default=0,
                   help="CSLS refinement iterations after supervised Procrustes (seed pairs kept)")
    g.add_argument("--refine-iterations", type=int, default=5, help="Procrustes refinement after adversarial")
    g.add_argument("--adv-steps", type=int, default=150,
                   help="adversarial mapping steps (~1 CPU-second each with --adv-hidden 2048, d=384)")
    g.add_argument("--adv-most-frequent", type=int, default=10000,
                   help="most frequent rows of each side the discriminator sees (0 = all)")
    g.add_argument("--adv-dis-steps", type=int, default=5, help="discriminator steps per mapping step")
    g.add_argument("--adv-batch-size", type=int, default=32, help="per side")
    g.add_argument("--adv-hidden", type=int, default=2048, help="discriminator hidden size")
    g.add_argument("--adv-lr", type=float, default=0.1, help="SGD learning rate (discriminator and mapping)")
    g.add_argument("--adv-smoothing", type=float, default=0.1, help="discriminator label smoothing")
    g.add_argument("--adv-beta", type=float, default=0.001, help="orthogonalisation beta")
    g.add_argument("--adv-eval-every", type=int, default=50,
                   help="evaluate the unsupervised criterion (model selection) every N steps")


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse ``argv`` and run; returns the report dict (for trelm-prepare)."""
    return run(build_parser().parse_args(argv))
