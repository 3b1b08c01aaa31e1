"""Where the preprocess steps put their text inside a data directory (docs/data-layout.md).

    work/text/para.{split}.{lang}   normalised parallel text      (trelm-vocab, step 1)
    work/text/mono.{lang}.{split}   normalised monolingual text
    work/tok/...                    the same, encoded as space-separated pieces
"""
import os

from ..errors import TreLMError

SPLITS = ("train", "valid", "test")


def check_pair(src: str, tgt: str, src_option: str = "--src", tgt_option: str = "--tgt") -> None:
    """The rule of language_pair.parse_langs for two options: two different languages
    (checked before a preprocessing command writes anything)."""
    if src == tgt:
        raise TreLMError(f"{src_option} {src} and {tgt_option} {tgt}: expected two different languages "
                         "(the source language and the target language)")


def _name(kind: str, split: str, lang: str) -> str:
    return f"para.{split}.{lang}" if kind == "para" else f"mono.{lang}.{split}"


def text_path(work: str, kind: str, split: str, lang: str) -> str:
    """work/text/para.{split}.{lang} and work/text/mono.{lang}.{split}."""
    return os.path.join(work, "text", _name(kind, split, lang))


def tok_path(work: str, kind: str, split: str, lang: str) -> str:
    """work/tok/para.{split}.{lang} and work/tok/mono.{lang}.{split}."""
    return os.path.join(work, "tok", _name(kind, split, lang))
