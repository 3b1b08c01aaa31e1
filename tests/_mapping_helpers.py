"""Synthetic fixtures for the embedding-mapping tests: a tiny WordPiece-style
source model (trelm_tiny, d=32) and a sentencepiece-style joint vocabulary.

Stand-ins for the files of ``trelm-import`` (<dir>/model.pt + dict.txt) and the
joint vocabulary step (<data>/dict.txt + tokenized text)."""
import contextlib
import os
import random
from typing import Dict, List, Optional, Sequence

import torch

from fairseq.data import Dictionary

from trelm_fairseq.checkpoint import build_model, load_checkpoint, model_config, save_checkpoint
from trelm_fairseq.preprocess.init_checkpoint import token_correspondence

WS = "\u2581"

# old (WordPiece) vocabulary: whole words, '##' continuations, reserved entries
OLD_WORDS = ["[unused0]", "[unused1]", "the", "cat", "dog", "house", "red", "blue", "big", "small", "run",
             "walk", "is", "on", "in", "and", "of", "to", "it", "was", ".", ",", "##s", "##ing", "##ed",
             "##ly", "##er", "##es", "play", "green", "tree"]
# new (sentencepiece) vocabulary: shared pieces, continuation pieces, target-only pieces
NEW_PIECES = [WS + "the", WS + "cat", WS + "dog", "s", "ing", WS + "kedi", WS + "köpek", "ler", "lar",
              WS + "ev", WS + "kırmızı", WS + ".", ",", WS + "play", "er", WS + "unused0", WS, "zz"]


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Tiny matrices are much faster single-threaded (and the machine is shared)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def write_dict(path: str, symbols: Sequence[str], counts: Optional[Dict[str, int]] = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for s in symbols:
            f.write(f"{s} {(counts or {}).get(s, 1)}\n")


def load_dict(path: str, mask: bool = True) -> Dictionary:
    d = Dictionary.load(path)
    if mask:
        d.add_symbol("<mask>")
    return d


def make_source_model(folder: str, words: Sequence[str] = OLD_WORDS, seed: int = 0, n_langs: int = 2,
                      lang_row0: bool = True, embeddings: Optional[torch.Tensor] = None, **overrides) -> str:
    """Save a trelm_tiny 'source model' (model.pt + dict.txt, <mask> last row).

    Non-zero language row 0 (unless ``lang_row0=False``) checks that it is kept,
    a non-default LayerNorm eps checks that it is carried over."""
    os.makedirs(folder, exist_ok=True)
    write_dict(os.path.join(folder, "dict.txt"), words)
    d = load_dict(os.path.join(folder, "dict.txt"))
    overrides.setdefault("layernorm_eps", 1e-12)
    cfg = model_config("trelm_tiny", n_langs=n_langs, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(cfg, d)
        for p in model.parameters():  # make every weight distinguishable from a fresh init
            p.data.add_(torch.randn_like(p) * 0.05)
        if embeddings is not None:
            model.encoder.embed_tokens.weight.data.copy_(embeddings)
        if not lang_row0:
            model.encoder.embed_langs.weight.data.zero_()
    save_checkpoint(os.path.join(folder, "model.pt"), model, cfg, meta={"origin": "test"})
    return folder


def make_data_dir(folder: str, pieces: Sequence[str] = NEW_PIECES, counts: Optional[Dict[str, int]] = None) -> str:
    os.makedirs(folder, exist_ok=True)
    write_dict(os.path.join(folder, "dict.txt"), pieces, counts)
    return folder


def synthetic_corpus(path: str, pieces: Sequence[str], n_lines: int = 1500, seed: int = 0) -> Dict[str, int]:
    """Zipf-distributed random lines of pieces with some co-occurrence structure
    (pieces are drawn from a few topics), so skip-gram has something to learn."""
    rng = random.Random(seed)
    pieces = list(pieces)
    weights = [1.0 / (r + 1) ** 0.8 for r in range(len(pieces))]
    n_topics = 8
    topics = [rng.sample(range(len(pieces)), max(4, len(pieces) // 6)) for _ in range(n_topics)]
    counts: Dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            topic = topics[rng.randrange(n_topics)]
            line = []
            for _ in range(rng.randint(5, 15)):
                i = rng.choice(topic) if rng.random() < 0.6 else rng.choices(range(len(pieces)), weights)[0]
                line.append(pieces[i])
                counts[pieces[i]] = counts.get(pieces[i], 0) + 1
            f.write(" ".join(line) + "\n")
    return counts


def random_rotation(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def gaussian_mixture(n: int, d: int, clusters: int = 12, seed: int = 0) -> torch.Tensor:
    """Anisotropic mixture of Gaussians with unequal weights (a cloud with structure)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g) * 3 * torch.linspace(0.5, 2.0, d)
    weights = torch.softmax(torch.randn(clusters, generator=g), 0)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    return centers[labels] + 0.5 * torch.randn(n, d, generator=g)


def small_rotation(d: int, angle: float, seed: int = 0) -> torch.Tensor:
    """exp(A) for a random skew-symmetric A of spectral norm ``angle`` (radians)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g)
    a = (a - a.t()) / 2
    a = a / torch.linalg.matrix_norm(a, 2) * angle
    return torch.linalg.matrix_exp(a)


def pieces_for(words: List[str]) -> List[str]:
    """The sentencepiece spelling of WordPiece tokens ('word' -> '▁word', '##ing' -> 'ing')."""
    return [w[2:] if w.startswith("##") else WS + w for w in words]


def init_rows(src: str, data: str, out: str):
    """(new dictionary, old dictionary, correspondence, the state of the init checkpoint ``out``,
    its embedding rows, the source model's rows) for the fixtures' source ``src`` and data ``data``."""
    new = load_dict(os.path.join(data, "dict.txt"))
    old = load_dict(os.path.join(src, "dict.txt"))
    state = load_checkpoint(out)
    src_emb = load_checkpoint(os.path.join(src, "model.pt"))["model"]["encoder.embed_tokens.weight"]
    return new, old, token_correspondence(new, old), state, state["model"]["encoder.embed_tokens.weight"], src_emb
