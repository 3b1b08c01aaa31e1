"""Training-free probes of cross-lingual alignment (DESIGN.md, "Measuring the transfer").

On held-out parallel pairs (``para/{split}.S-T.{S,T}`` of a data directory), each side is
encoded with its own language id and mean-pooled over its non-padding tokens at two
places: the lower-half output (before the TRILayer, where TreLM's adversarial term and
2b's reading of T act) and the final layer.

* bitext retrieval P@1: for every S sentence the nearest T sentence by cosine (and by
  CSLS, k=10, which corrects hubness), and the other way round; chance is 1/n.
* language-ID probe: logistic regression on the pooled lower-half states, trained on
  the S side of one half of the pairs and the T side of the other, tested on the remaining
  sides (no tested sentence is trained on; its translation is): 1.0 = the languages are
  fully separable, 0.5 = indistinguishable.
* module-classification probe (module_probe): a logistic regression on frozen features
  of labelled help paragraphs, trained on target-language paragraphs or (zero-shot) on
  English ones, tested on target-language paragraphs: no fine-tuning, so it reads what
  the pre-trained states already carry.

Features are plain means of the states; retrieval compares them by cosine, the
logistic-regression probes standardise them first.  The command: trelm_fairseq.cli.probe.
"""
import os
from typing import Dict, List, Optional

import numpy as np
import torch

from .layout import DataDir
from .stage_table import NEXT_STAGE
from .errors import TreLMError

CSLS_K = 10


def _length_batches(dataset, bos: int, pad: int, batch_size: int, max_len: int):
    """(row indices, padded tokens) batches of ``dataset``'s sentences, ``<s>`` prepended as in
    training, cut to ``max_len`` tokens, grouped by length (little padding)."""
    rows = [torch.cat([torch.tensor([bos]), dataset[i].long()])[:max_len] for i in range(len(dataset))]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        tokens = torch.full((len(ids), len(rows[ids[-1]])), pad, dtype=torch.long)
        for j, i in enumerate(ids):
            tokens[j, : len(rows[i])] = rows[i]
        yield ids, tokens


def _mean_pool(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, C) mean of (B, T, C) ``states`` over the positions where ``keep`` (B, T, 1) is 1."""
    return (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)


@torch.no_grad()
def pooled_features(model, dataset, bos: int, pad: int, lang_id: int, batch_size: int = 32,
                    max_len: int = 512) -> Dict[str, torch.Tensor]:
    """{"lower": (n, d), "top": (n, d)} mean-pooled states of every sentence of ``dataset``
    (a fairseq indexed dataset of token ids), ``<s>`` prepended as in training and cut to
    ``max_len`` tokens; rows in dataset order."""
    model.eval()
    lower, top = [None] * len(dataset), [None] * len(dataset)
    for ids, tokens in _length_batches(dataset, bos, pad, batch_size, max_len):
        keep = tokens.ne(pad).unsqueeze(-1).float()
        x, extra = model.encoder.extract_features(tokens, lang_ids=lang_id)
        low, high = _mean_pool(extra["lower_out"].transpose(0, 1), keep), _mean_pool(x, keep)
        for j, i in enumerate(ids):
            lower[i], top[i] = low[j], high[j]
    return {"lower": torch.stack(lower).float(), "top": torch.stack(top).float()}


def layer_names(model) -> List[str]:
    """Names of the states ``extract_features(..., return_all_hiddens=True)`` returns, in order:
    "emb", the lower half's layers 1..k, "tri" (the TRILayer, when the model has one), k+1..L."""
    k, n = model.encoder.tri_layer_position, len(model.encoder.layers)
    tri = ["tri"] if model.encoder.tri_layer is not None else []
    return ["emb"] + [str(i) for i in range(1, k + 1)] + tri + [str(i) for i in range(k + 1, n + 1)]


# the two mean poolings of the per-layer features: every token (as pooled_features), and the
# sentence's own pieces only (<s> and </s> left out)
POOLINGS = ("all", "content")


@torch.no_grad()
def layer_features(model, dataset, bos: int, eos: int, pad: int, lang_id: int, batch_size: int = 32,
                   max_len: int = 512) -> Dict[str, torch.Tensor]:
    """{pooling: (layers, n, d)} mean-pooled states of every layer (layer_names' order) for every
    sentence of ``dataset``, under both POOLINGS; rows in dataset order."""
    model.eval()
    out = {p: [None] * len(dataset) for p in POOLINGS}
    for ids, tokens in _length_batches(dataset, bos, pad, batch_size, max_len):
        keeps = {"all": tokens.ne(pad), "content": tokens.ne(pad) & tokens.ne(bos) & tokens.ne(eos)}
        _, extra = model.encoder.extract_features(tokens, lang_ids=lang_id, return_all_hiddens=True)
        states = torch.stack([s.transpose(0, 1) for s in extra["inner_states"]])  # (L, B, T, C)
        for p, keep in keeps.items():
            pooled = (states * keep[None, :, :, None]).sum(2) / keep.sum(1).clamp(min=1)[None, :, None]
            for j, i in enumerate(ids):
                out[p][i] = pooled[:, j]
    return {p: torch.stack(rows, dim=1).float() for p, rows in out.items()}


def retrieval_p1(src: torch.Tensor, tgt: torch.Tensor, k: int = CSLS_K) -> Dict[str, float]:
    """P@1 of src -> tgt and tgt -> src retrieval (row i of src translates row i of tgt),
    by cosine nearest neighbour and by CSLS."""
    a = torch.nn.functional.normalize(src, dim=-1)
    b = torch.nn.functional.normalize(tgt, dim=-1)
    sim = a @ b.T
    k = min(k, sim.size(0), sim.size(1))
    r_src = sim.topk(k, dim=1).values.mean(1)  # mean similarity of each src row to its k nearest tgt rows
    r_tgt = sim.topk(k, dim=0).values.mean(0)
    csls = 2 * sim - r_src[:, None] - r_tgt[None, :]
    gold = torch.arange(sim.size(0))

    def hits(scores):
        return (scores.argmax(1) == gold).float()

    def p1(scores):
        return float(hits(scores).mean())

    # per pair: 1 when both directions retrieve it by CSLS, 0.5 when one does (the mean is
    # p1_mean_csls): what a paired bootstrap over the pairs resamples (comparison/paired.py)
    both = ((hits(csls) + hits(csls.T)) / 2).tolist()
    return {"s2t_nn": p1(sim), "t2s_nn": p1(sim.T), "s2t_csls": p1(csls), "t2s_csls": p1(csls.T),
            "hits_csls": both}


def _pair_halves(src: torch.Tensor, tgt: torch.Tensor, seed: int):
    """(S features, T features, one half of the pair indices, the other half): a seeded split."""
    n = src.size(0)
    if n < 4:
        raise TreLMError(f"language-ID probe: {n} pairs; expected at least 4")
    order = np.random.RandomState(seed).permutation(n)
    return src.numpy(), tgt.numpy(), order[: n // 2], order[n // 2:]


def language_id_accuracy(src: torch.Tensor, tgt: torch.Tensor, seed: int = 1) -> float:
    """Held-out accuracy of a logistic regression telling S features from T features.
    Pairs are split in two halves; it trains on the S side of one half and the T side of
    the other, and tests on the remaining sides: no tested sentence was trained on, but each
    tested sentence's translation was (in the other language), so the probe answers "which
    language" for sentences whose content it has seen."""
    s, t, half_a, half_b = _pair_halves(src, tgt, seed)
    x_train = np.concatenate([s[half_a], t[half_b]])
    y_train = np.r_[np.zeros(len(half_a)), np.ones(len(half_b))]
    x_test = np.concatenate([s[half_b], t[half_a]])
    y_test = np.r_[np.zeros(len(half_b)), np.ones(len(half_a))]
    return linear_probe_accuracy(x_train, y_train, x_test, y_test)


def language_offset(src: torch.Tensor, tgt: torch.Tensor) -> Dict[str, float]:
    """How far apart two languages' features sit, against their spread: the squared distance of
    the means, the mean within-language variance (each language around its own mean, summed
    over the features) and their ratio.  A term that only shrinks every feature lowers the first
    two, not the ratio."""
    dist = float((src.mean(0) - tgt.mean(0)).pow(2).sum())
    spread = float((src.var(0, unbiased=False).sum() + tgt.var(0, unbiased=False).sum()) / 2)
    return {"mean_dist2": dist, "within_var": spread, "relative": dist / spread if spread > 0 else float("nan")}


def language_id_unseen_content(src: torch.Tensor, tgt: torch.Tensor, seed: int = 1) -> float:
    """Held-out accuracy of a logistic regression telling S features from T features, trained
    on both sides of half of the pairs and tested on both sides of the other half: neither a
    tested sentence nor its translation was trained on.  (language_id_accuracy tests sentences
    whose translations it trained on with the other label, so content can act as a cue against
    the language: with the per-language offset removed it falls below 0.5; docs/zero-shot.md.)"""
    s, t, half_a, half_b = _pair_halves(src, tgt, seed)

    def sides(rows):
        return np.concatenate([s[rows], t[rows]]), np.r_[np.zeros(len(rows)), np.ones(len(rows))]

    return linear_probe_accuracy(*sides(half_a), *sides(half_b))


@torch.no_grad()
def target_mlm_bits(model, data: str, langs: List[str], split: str = "valid", tokens_per_sample: int = 512,
                    seed: int = 1, max_tokens: int = 4096, valid_sample: int = 0,
                    valid_sample_seed: Optional[int] = None) -> float:
    """Target-language MLM loss (bits per masked token) of ``model`` on ``data``'s
    mono/T/{split}: the trelm_transfer task's language_specific data (masking seeded per
    sentence, so the figure equals fairseq-validate's ``mlm_loss`` for the same task
    settings, --valid-sample included) and the trelm_loss criterion, in this process."""
    import math

    from .criterions.trelm_loss import TreLMLoss
    from .tasks.trelm_transfer import TreLMTransferConfig, TreLMTransferTask

    cfg = TreLMTransferConfig(data=data, langs=",".join(langs), stage=NEXT_STAGE,
                              tokens_per_sample=tokens_per_sample, seed=seed, valid_sample=valid_sample)
    if valid_sample_seed is not None:
        cfg.valid_sample_seed = valid_sample_seed
    task = TreLMTransferTask.setup_task(cfg)
    task.load_dataset(split)
    dataset = task.dataset(split)
    criterion = TreLMLoss(task, adv_weight=0.0)
    batches = task.get_batch_iterator(dataset, max_tokens=max_tokens, required_batch_size_multiple=1,
                                      seed=seed, num_workers=0).next_epoch_itr(shuffle=False)
    model.eval()
    loss, n = 0.0, 0
    for sample in batches:
        _, _, log = criterion(model, sample)
        loss += float(log["mlm_loss"])  # a tensor (the criterion logs tensors)
        n += log["mlm_ntokens"]
    if n == 0:
        raise TreLMError(f"{data}/mono/{langs[1]}/{split}: no masked token to evaluate")
    return loss / n / math.log(2)


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                          y_test: np.ndarray) -> float:
    """Held-out accuracy of a logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


# training paragraphs per setting for the classification probe (the fine-tunes use up to
# 4000): a linear probe of 6 labels needs few, and the frozen forward pass is its whole cost
MODULE_PROBE_TRAIN = 1000


def module_probe(checkpoint: str, data: str, cls_dir: str, max_len: int,
                 max_train: int = MODULE_PROBE_TRAIN, split: str = "test") -> Dict[str, Dict[str, float]]:
    """Frozen-feature linear probes of the module classification (trelm_fairseq.classification's
    two settings under ``cls_dir``): a logistic regression on the mean-pooled states of
    ``max_train`` training paragraphs (a seeded draw) (target: target-language paragraphs; zeroshot:
    English ones, encoded with the English language id), accuracy on the target-language
    ``split`` paragraphs (test: the reports; valid: a choice); at the lower half's output and at
    the last layer.
    {"target": {"lower": acc, "top": acc}, "zeroshot": {...}}."""
    from .checkpoint import load_dictionary, load_model
    from .data import SubsetDataset, load_indexed

    dict_path = DataDir(data).dict_txt
    dictionary = load_dictionary(dict_path)
    model, _ = load_model(checkpoint, dictionary, dict_path=dict_path)

    def paragraphs(setting: str, name: str, lang_id: int, limit: Optional[int] = None):
        folder = os.path.join(cls_dir, setting)
        text = load_indexed(os.path.join(folder, "input0", name), dictionary, f"{setting} {name} paragraphs")
        labels = load_indexed(os.path.join(folder, "label", name), None, f"{setting} {name} labels")
        # the training files are grouped by module: a seeded draw, not the first ones
        rows = np.arange(len(text)) if limit is None or limit >= len(text) else \
            np.sort(np.random.RandomState(1).permutation(len(text))[:limit])
        feats = pooled_features(model, SubsetDataset(text, rows), dictionary.bos(), dictionary.pad(),
                                lang_id, max_len=max_len)
        return feats, np.array([int(labels[int(i)][0]) for i in rows])

    test, y_test = paragraphs("target", split, 1)
    out = {}
    for setting, lang_id in (("target", 1), ("zeroshot", 0)):
        train, y_train = paragraphs(setting, "train", lang_id, max_train)
        out[setting] = {where: linear_probe_accuracy(train[where].numpy(), y_train, test[where].numpy(), y_test)
                        for where in ("lower", "top")}
    return out


def checkpoint_tokens_per_sample(state: Dict, default: int) -> int:
    """The --tokens-per-sample a checkpoint was trained with (its task cfg), else ``default``."""
    task = (state.get("cfg") or {}).get("task") or {}
    value = task.get("tokens_per_sample") if hasattr(task, "get") else None
    return int(value) if value else default


def probe_checkpoint(checkpoint: str, data: str, langs: List[str], split: str = "test",
                     max_pairs: Optional[int] = 1000, threads: Optional[int] = None,
                     target_mlm: bool = True, tokens_per_sample: Optional[int] = None,
                     valid_sample: int = 0) -> Dict:
    """Every probe of one checkpoint on ``data``'s held-out pairs (and, with
    ``target_mlm``, its target MLM loss on the valid split; with ``valid_sample`` also on
    the training runs' --valid-sample sentences, a point of the target MLM curves, from the
    model loaded here once).  ``tokens_per_sample``: sentences are cut to it for the
    retrieval and language-ID features and longer ones skipped for MLM (default: what the
    checkpoint was trained with, else at most 512); give one value to compare checkpoints
    of different origins."""
    from .checkpoint import load_dictionary, load_model
    from .data import SubsetDataset, load_indexed

    src_lang, tgt_lang = langs
    dict_path = DataDir(data).dict_txt
    dictionary = load_dictionary(dict_path)  # + <mask>, as the checkpoints have it
    if threads:
        torch.set_num_threads(threads)
    model, state = load_model(checkpoint, dictionary, dict_path=dict_path, langs=langs,
                              langs_source=f"the probe's language pair ({data})")
    prefix = os.path.join(data, "para", f"{split}.{src_lang}-{tgt_lang}")
    sides = [load_indexed(f"{prefix}.{lang}", dictionary, f"{split} {lang} sentences") for lang in langs]
    if len(sides[0]) != len(sides[1]):
        raise TreLMError(f"{prefix}.{{{src_lang},{tgt_lang}}}: {len(sides[0])} vs {len(sides[1])} sentences: "
                         "expected the two sides of one parallel split")
    n = len(sides[0]) if max_pairs is None else min(len(sides[0]), max_pairs)
    tps = tokens_per_sample or checkpoint_tokens_per_sample(state, min(512, model.max_positions()))
    feats = [pooled_features(model, SubsetDataset(ds, np.arange(n)), dictionary.bos(), dictionary.pad(), lang_id,
                             max_len=tps)
             for lang_id, ds in enumerate(sides)]
    out: Dict = {"checkpoint": checkpoint, "split": split, "pairs": n, "chance_p1": 1.0 / n,
                 "tokens_per_sample": tps}
    for where in ("lower", "top"):
        out[where] = retrieval_p1(feats[0][where], feats[1][where])
        out[where]["p1_mean_csls"] = (out[where]["s2t_csls"] + out[where]["t2s_csls"]) / 2
    out["lower"]["langid_acc"] = language_id_accuracy(feats[0]["lower"], feats[1]["lower"])
    out["lower"]["langid_unseen_acc"] = language_id_unseen_content(feats[0]["lower"], feats[1]["lower"])
    if target_mlm:
        out["target_mlm_bits"] = target_mlm_bits(model, data, langs, "valid", tps)
        if valid_sample:
            out["valid_sample"] = valid_sample
            out["target_mlm_bits_valid_sample"] = target_mlm_bits(model, data, langs, "valid", tps,
                                                                  valid_sample=valid_sample)
    return out


def format_row(name: str, r: Dict) -> str:
    lo, top = r["lower"], r["top"]
    mlm = f"target MLM {r['target_mlm_bits']:.3f} bits  " if "target_mlm_bits" in r else ""
    return (f"{name:<28} {mlm}P@1 csls lower {lo['p1_mean_csls']:.3f} (s2t {lo['s2t_csls']:.3f}, t2s {lo['t2s_csls']:.3f}; "
            f"nn {lo['s2t_nn']:.3f}/{lo['t2s_nn']:.3f})  top {top['p1_mean_csls']:.3f}  "
            f"lang-ID lower {lo['langid_acc']:.3f}  (n={r['pairs']})")


def data_langs(data: str, spec: Optional[str]) -> List[str]:
    """[S, T] from --langs, else from DATA/prepare.json (trelm-stages' rule and checks)."""
    from .language_pair import langs_from_prepare, parse_langs

    return parse_langs(spec or langs_from_prepare(data))
