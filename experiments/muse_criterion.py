#!/usr/bin/env python
"""Can MUSE's unsupervised criterion tell the right orthogonal map from a wrong one here?
(docs/initialisations.md, "The adversarial (MUSE) map").

    python experiments/muse_criterion.py --data runs/tr/data --vectors runs/init-cmp/tr-vectors.npz

On a prepared pair and the fastText vectors of `trelm-map-embeddings --save-vectors`, with the
held-out split of trelm-map-embeddings' defaults, every map is scored by the held-out P@1
(CSLS, nearest neighbour) and by muse.mean_cosine_criterion, the criterion MUSE selects its map
and accepts refinements by: least squares and Procrustes on the seed pairs, Procrustes on every
shared token (an oracle: the best orthogonal map), the adversarial map at the CLI's settings,
before and after refinement, and the oracle after refinement.
"""
import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a trelm-prepare data directory (with source-head/ or source/)")
    p.add_argument("--vectors", required=True, help="fastText vectors from trelm-map-embeddings --save-vectors")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args(argv)

    from trelm_fairseq.language_pair import langs_from_prepare
    from trelm_fairseq.preprocess import muse
    from trelm_fairseq.preprocess.embedding_mapping import (MappingProblem, adversarial_config, load_vocabularies,
                                                            subword_vectors)
    from trelm_fairseq.preprocess.mapping_options import build_parser

    src, tgt = langs_from_prepare(args.data, "run trelm-prepare on it first").split(",")
    source = os.path.join(args.data, "source-head")
    if not os.path.isdir(source):
        source = os.path.join(args.data, "source")
    text = [os.path.join(args.data, "work", "tok", f"mono.{lang}.train") for lang in (src, tgt)]
    opts = build_parser().parse_args(["--source-model", source, "--data", args.data, "--threads", "1", "--quiet",
                                      "--deterministic", "--text", *text, "--load-vectors", args.vectors])
    quiet = lambda msg: None  # noqa: E731
    vocab = load_vocabularies(opts, quiet)
    ft, counts = subword_vectors(opts, vocab.new_dict, vocab.source_emb.size(1), quiet, {})
    prob = MappingProblem(vocab.new_dict.symbols, vocab.old_dict.symbols, vocab.corr, ft, counts, vocab.source_emb,
                          opts.ft_min_count, opts.heldout, opts.seed)
    n, held = opts.max_rank, (prob.test_pairs[:, 0], prob.test_pairs[:, 1])

    def refine(W):  # as the CLI refines the adversarial map: held-out rows kept out of the dictionaries
        return muse.refine(prob.X, prob.Y, W, opts.refine_iterations, opts.csls_k, n, *held, None, n, quiet)[0]

    oracle = muse.supervised(prob.X, prob.Y, prob.shared, "procrustes")
    adversarial = muse.adversarial(prob.X, prob.Y, adversarial_config(opts), log=quiet)[0]
    maps = {
        "least squares, seed pairs (the default)": muse.supervised(prob.X, prob.Y, prob.seed_pairs, "lstsq", opts.ridge),
        "Procrustes, seed pairs": muse.supervised(prob.X, prob.Y, prob.seed_pairs, "procrustes"),
        "Procrustes, every shared token (oracle)": oracle,
        f"adversarial, {opts.adv_steps} steps": adversarial,
        f"adversarial + {opts.refine_iterations} refinements": refine(adversarial),
        f"oracle + {opts.refine_iterations} refinements": refine(oracle),
    }
    table = {}
    print(f"{src}->{tgt}: map | held-out P@1 CSLS / NN | criterion")
    for name, W in maps.items():
        r = prob.evaluate(W, opts.csls_k, n)
        crit = muse.mean_cosine_criterion(muse.apply_mapping(prob.X, W), prob.Y, n)
        table[name] = {"p1_csls": r["csls"], "p1_nn": r["nn"], "n": r["n"], "criterion": crit}
        print(f"  {name} | {r['csls']:.3f} / {r['nn']:.3f} | {crit:.4f}", flush=True)
    if args.json:
        from trelm_fairseq.fileio import write_json

        write_json(args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
