"""Fit the MLM head of a source model that ships without one (trelm-prepare's ``source_head`` step).

all-MiniLM-L6-v2, the embedded default, is a sentence encoder: its checkpoint has no MLM head,
so trelm-import starts the head fresh and every compared model would begin at log2(V) bits and
spend its first updates learning a head instead of transferring.  This step gives the source
model an English head before any transfer, so the head is the source model's cost, paid once:

* the encoder (embeddings included) stays frozen, so the last-layer states of the masked
  sentences do not change during the fit: they are computed once, and the head (dense,
  LayerNorm, output bias; the output weight is tied to the frozen embeddings) trains for a few
  epochs on those states alone;
* masking is fairseq's ``MaskTokensDataset`` with BERT's rates (15%; 80% <mask>, 10% random,
  10% kept), seeded;
* English MLM (bits per masked token) is measured on held-out English before the fit and after
  every epoch; the epoch with the lowest held-out loss is the one written.

The output folder is a trelm source model like trelm-import's (model.pt, dict.txt, tokenizer/,
import.json) plus ``source_head.json`` (the figures), so the embeddings step and every model
that starts from the mapped initialisation use the fitted head.
"""
import json
import math
import os
import random
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..layout import ModelDir
from ..checkpoint import atomic_torch_save, load_dictionary, load_model
from ..errors import TreLMError
from ..fileio import atomic_folder, check_input_file, iter_raw_lines, write_json
from ..flops import Shape, part_flops
from ..modules.chunked_lm_loss import lm_head_loss
from .source_tokenizer import DESCRIPTOR, TOKENIZER_SUBDIR, load_tokenizer

IMPORT_RECORD = "import.json"
RECORD = "source_head.json"
HEAD_PREFIX = "encoder.lm_head."
MAX_LEN = 256  # tokens per sentence (with <s> and </s>); longer lines are cut


def head_status(source_dir: str) -> Tuple[bool, str]:
    """(does the source need a fitted head, why): only a trelm-import output that recorded no MLM
    head and carries its tokenizer can be fitted (the English text must be encoded as the
    source model reads it)."""
    record = os.path.join(source_dir, IMPORT_RECORD)
    if not os.path.isfile(record):
        return False, f"{source_dir} has no {IMPORT_RECORD}: a trelm checkpoint, its head is used as it is"
    with open(record, encoding="utf-8") as f:
        record = json.load(f)
    if "mlm_head_fitted" in record:
        return False, "the source model's MLM head was fitted already (source_head step)"
    if record.get("mlm_head_imported") is not False:
        return False, "the source model has its own MLM head"
    if not os.path.isfile(os.path.join(source_dir, TOKENIZER_SUBDIR, DESCRIPTOR)):
        return False, f"the source model has no MLM head, but {source_dir} has no tokenizer to encode English with"
    return True, "the source model has no MLM head"


def encode_sentences(path: str, tokenizer, dictionary, max_sentences: int, seed: int) -> List[torch.Tensor]:
    """Up to ``max_sentences`` non-empty lines of ``path`` (a seeded sample, in file order), as
    ``<s> tokens </s>`` id tensors of the source vocabulary."""
    check_input_file(path, "English text")
    lines = [line for _, line in iter_raw_lines(path) if line.strip()]
    if not lines:
        raise TreLMError(f"{path}: no non-empty line to fit the source MLM head on")
    if len(lines) > max_sentences:
        keep = sorted(random.Random(seed).sample(range(len(lines)), max_sentences))
        lines = [lines[i] for i in keep]
    out = []
    for text in tokenizer.encode_lines(lines):
        ids = dictionary.encode_line(text, add_if_not_exist=False, append_eos=True).long()[:MAX_LEN - 1]
        out.append(torch.cat([ids.new_tensor([dictionary.bos()]), ids]))
    return out


def masked_pairs(sentences: List[torch.Tensor], dictionary, seed: int):
    """(masked input, target) per sentence: fairseq's MaskTokensDataset at BERT's rates (target
    is <pad> where nothing is predicted)."""
    from fairseq.data import ListDataset, MaskTokensDataset

    base = ListDataset(sentences, sizes=[len(s) for s in sentences])
    src, tgt = MaskTokensDataset.apply_mask(base, dictionary, pad_idx=dictionary.pad(),
                                            mask_idx=dictionary.index("<mask>"), seed=seed, mask_prob=0.15,
                                            leave_unmasked_prob=0.1, random_token_prob=0.1)
    return [(src[i], tgt[i]) for i in range(len(sentences))]


@torch.no_grad()
def masked_states(encoder, pairs, pad: int, batch_tokens: int = 8192,
                  progress: Optional[Callable[[str], None]] = None) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    """The frozen encoder's last-layer states at the predicted positions (N x C), their targets
    (N), and what the forward cost (sentences, tokens, FLOPs).  Sentences are batched by length
    so that little padding is computed."""
    from fairseq.data import data_utils

    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    feats, targets = [], []
    shape = Shape.of_model(encoder)
    cost = {"sentences": len(pairs), "tokens": 0, "flops": 0.0}
    start, done_at = 0, 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * len(pairs[order[end]][0]) <= batch_tokens:
            end += 1
        batch = [pairs[i] for i in order[start:end]]
        src = data_utils.collate_tokens([s for s, _ in batch], pad)
        tgt = data_utils.collate_tokens([t for _, t in batch], pad)
        x, _ = encoder.extract_features(src)
        where = tgt.ne(pad)
        feats.append(x[where])
        targets.append(tgt[where])
        cost["tokens"] += int(src.ne(pad).sum())
        cost["flops"] += part_flops(shape, {}, tuple(src.shape), 0, training=False).total
        start = end
        if progress and start - done_at >= 2000:
            progress(f"encoded {start}/{len(order)} sentences")
            done_at = start
    return torch.cat(feats), torch.cat(targets), cost


@torch.no_grad()
def head_bits(head, feats: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy in bits per predicted token."""
    return float(lm_head_loss(head, feats, targets, chunk=4096)) / max(1, len(targets)) / math.log(2)


def fit_head(head, train: Tuple[torch.Tensor, torch.Tensor], valid: Tuple[torch.Tensor, torch.Tensor],
             epochs: int, lr: float, batch: int, seed: int,
             log: Callable[[str], None] = print) -> Dict:
    """Train ``head``'s dense, LayerNorm and bias (not its tied output weight) on fixed states;
    leaves the best held-out epoch's values in ``head``; returns the per-epoch figures."""
    trained = [head.dense.weight, head.dense.bias, head.layer_norm.weight, head.layer_norm.bias, head.bias]
    frozen_weight = head.weight.requires_grad
    head.weight.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    feats, targets = train
    steps_per_epoch = math.ceil(len(targets) / batch)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)  # linear warm-up over 10% of the steps, then linear decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    best = {"epoch": 0, "valid_bits": head_bits(head, *valid), "state": [p.detach().clone() for p in trained]}
    history = [{"epoch": 0, "valid_bits": best["valid_bits"]}]
    log(f"English MLM before the fit: {best['valid_bits']:.3f} bits (held out, {len(valid[1])} masked tokens)")
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(targets), generator=gen)
        train_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            loss = lm_head_loss(head, feats[idx], targets[idx], chunk=4096)
            opt.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            opt.step()
            sched.step()
            train_loss += float(loss.detach())
        head.eval()
        bits = head_bits(head, *valid)
        history.append({"epoch": epoch, "train_bits": train_loss / len(targets) / math.log(2), "valid_bits": bits})
        log(f"epoch {epoch}/{epochs}: train {history[-1]['train_bits']:.3f} bits, held out {bits:.3f} bits")
        if bits < best["valid_bits"]:
            best = {"epoch": epoch, "valid_bits": bits, "state": [p.detach().clone() for p in trained]}
    with torch.no_grad():
        for p, v in zip(trained, best["state"]):
            p.copy_(v)
            p.requires_grad_(False)
    head.weight.requires_grad_(frozen_weight)
    return {"history": history, "best_epoch": best["epoch"]}


CACHE_SUBDIR = "source-heads"


def cache_key(source_dir: str, train_text: str, valid_text: str, options: Dict) -> str:
    """What a fitted head depends on, by content: the source model's weights and dictionary, the
    English text's bytes and the fit's options (not the paths: a copied data directory, or
    another target language whose English text is the same, finds the same head)."""
    import hashlib

    from ..fileio import file_sha256

    folder = ModelDir(source_dir)
    content = {"source": {os.path.basename(f): file_sha256(f) for f in (folder.model_pt, folder.dict_txt)},
               "english": {"train": file_sha256(train_text), "valid": file_sha256(valid_text)},
               "options": options, "version": 1}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def fit_or_reuse(source_dir: str, train_text: str, valid_text: str, out_dir: str, cache_dir: Optional[str],
                 options: Dict, log: Callable[[str], None] = print) -> Dict:
    """fit_source_head, unless ``cache_dir``/source-heads holds the head fitted on the same
    content (cache_key): then that folder is copied to ``out_dir``.  A newly fitted head is
    copied into the cache; a cache that cannot be written only costs the reuse (logged)."""
    cached = os.path.join(cache_dir, CACHE_SUBDIR, cache_key(source_dir, train_text, valid_text, options)) \
        if cache_dir else None
    if cached and os.path.isfile(os.path.join(cached, RECORD)):  # complete: written by atomic_folder
        with open(os.path.join(cached, RECORD), encoding="utf-8") as f:
            figures = json.load(f)
        with atomic_folder(out_dir) as tmp:
            shutil.copytree(cached, tmp, dirs_exist_ok=True)
        bits = figures["english_mlm_bits"]
        log(f"source MLM head: reused the head fitted earlier on the same source model and English text "
            f"({cached}; English MLM {bits['before']:.3f} -> {bits['after']:.3f} bits); wrote {out_dir}")
        return dict(figures, reused_from=cached)
    figures = fit_source_head(source_dir, train_text, valid_text, out_dir, log=log, **options)
    if cached:
        try:
            with atomic_folder(cached) as tmp:
                shutil.copytree(out_dir, tmp, dirs_exist_ok=True)
            log(f"source MLM head: kept in the cache for other data directories: {cached}")
        except TreLMError as e:
            log(f"source MLM head: not kept in the cache ({e}); the next data directory fits it again")
    return figures


def fit_source_head(source_dir: str, train_text: str, valid_text: str, out_dir: str, *,
                    max_sentences: int = 10000, epochs: int = 6, lr: float = 5e-3, batch: int = 2048,
                    seed: int = 1, log: Callable[[str], None] = print) -> Dict:
    """Fit the MLM head of the trelm-import output ``source_dir`` on English text (``train_text``,
    ``valid_text``: raw lines) and write the source model with that head to ``out_dir`` (replaced
    as a whole when complete); returns the figures also written to ``out_dir``/source_head.json."""
    if max_sentences < 1 or epochs < 1 or lr <= 0 or batch < 1:
        raise TreLMError(f"source head: expected positive sentences / epochs / lr / batch, got {max_sentences} / "
                         f"{epochs} / {lr} / {batch}")
    dictionary = load_dictionary(ModelDir(source_dir).dict_txt, what="source dictionary")
    model_path = ModelDir(source_dir).model_pt
    model, state = load_model(model_path, dictionary)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = load_tokenizer(source_dir)
    encoder, head = model.encoder, model.encoder.lm_head

    def states(path: str, n: int, what: str):
        pairs = masked_pairs(encode_sentences(path, tokenizer, dictionary, n, seed), dictionary, seed)
        feats, targets, cost = masked_states(encoder, pairs, dictionary.pad(), progress=lambda m: log(f"{what}: {m}"))
        if len(targets) == 0:
            raise TreLMError(f"{path}: no masked token drawn; the text is too short to fit a head on")
        log(f"{what}: {cost['sentences']} sentences, {cost['tokens']} tokens, {len(targets)} masked")
        return (feats, targets), cost

    train, train_cost = states(train_text, max_sentences, "English train")
    valid, valid_cost = states(valid_text, max_sentences, "English held out")
    fit = fit_head(head, train, valid, epochs=epochs, lr=lr, batch=batch, seed=seed, log=log)
    # dense + output projection forward, dense weight grad and the input grad through the
    # (frozen) projection: the FLOP ledger's lm_head/embeddings rule on the predicted tokens
    shape = Shape.of_model(model)
    fit_flops = epochs * part_flops(Shape(0, shape.dim, shape.ffn, shape.vocab, 0, False),
                                    {"lm_head": True, "embeddings": False}, (0, 0), len(train[1])).total
    figures = {
        "source": os.path.abspath(source_dir),
        "english_text": {"train": os.path.abspath(train_text), "valid": os.path.abspath(valid_text)},
        "options": {"max_sentences": max_sentences, "epochs": epochs, "lr": lr, "batch": batch, "seed": seed},
        "masked_tokens": {"train": len(train[1]), "valid": len(valid[1])},
        "english_mlm_bits": {"before": fit["history"][0]["valid_bits"], "after": min(
            h["valid_bits"] for h in fit["history"])},
        "best_epoch": fit["best_epoch"],
        "history": fit["history"],
        "flops": {"encoder_forward": train_cost["flops"] + valid_cost["flops"], "head_fit": fit_flops},
        "trained": ["lm_head.dense", "lm_head.layer_norm", "lm_head.bias"],
    }
    state["model"] = {k: (v if not k.startswith(HEAD_PREFIX) else model.state_dict()[k].clone())
                      for k, v in state["model"].items()}
    state.setdefault("trelm", {})["source_head"] = {k: figures[k] for k in ("english_mlm_bits", "best_epoch")}
    with atomic_folder(out_dir) as tmp:
        atomic_torch_save(state, ModelDir(tmp).model_pt)
        shutil.copy2(ModelDir(source_dir).dict_txt, ModelDir(tmp).dict_txt)
        shutil.copytree(os.path.join(source_dir, TOKENIZER_SUBDIR), os.path.join(tmp, TOKENIZER_SUBDIR))
        with open(os.path.join(source_dir, IMPORT_RECORD), encoding="utf-8") as f:
            record = json.load(f)
        record["mlm_head_fitted"] = {k: figures[k] for k in ("english_mlm_bits", "best_epoch", "options")}
        write_json(os.path.join(tmp, IMPORT_RECORD), record)
        write_json(os.path.join(tmp, RECORD), figures)
    bits = figures["english_mlm_bits"]
    log(f"source MLM head fitted: English MLM {bits['before']:.3f} -> {bits['after']:.3f} bits "
        f"(epoch {fit['best_epoch']}); wrote {out_dir}")
    return figures
