"""The one rule for a language pair "S,T" (source first): the task, the stage runner, the
sweep and the probes all validate --langs here, and read the pair trelm-prepare recorded."""
import os
from typing import List

from .layout import DataDir
from .errors import TreLMError
from .fileio import read_json


def parse_langs(spec: str) -> List[str]:
    """[S, T] from "S,T"; TreLMError unless two different non-empty codes."""
    langs = [x.strip() for x in str(spec).split(",") if x.strip()]
    if len(langs) != 2 or langs[0] == langs[1]:
        raise TreLMError(f"--langs {spec!r}: expected two different languages 'S,T' (source first), e.g. en,tr")
    return langs


def langs_from_prepare(data: str, remedy: str = "pass --langs S,T (e.g. en,tr)") -> str:
    """The "S,T" pair trelm-prepare recorded in DATA/prepare.json (validated by parse_langs)."""
    path = DataDir(data).prepare_json
    if not os.path.isdir(data):
        raise TreLMError(f"{data}: no such data directory: expected the output folder of trelm-prepare")
    if not os.path.isfile(path):
        raise TreLMError(f"--langs not given and {path}: not found, so {data} was not prepared by trelm-prepare "
                         f"(or not to the end): run trelm-prepare on it, or {remedy}")
    try:
        info = read_json(path, DataDir.RECORD)
    except TreLMError:  # missing or not JSON: say what to do instead
        info = {}
    langs = info.get("langs") or info.get("languages") if isinstance(info, dict) else None
    if isinstance(langs, (list, tuple)):
        langs = ",".join(map(str, langs))
    if not isinstance(langs, str) or langs.count(",") != 1:
        raise TreLMError(f"--langs not given and {path} records no 'langs': {remedy}")
    return ",".join(parse_langs(langs))


def check_langs_match(data: str, langs: str) -> str:
    """``langs`` ("S,T", e.g. from --langs) checked against the pair trelm-prepare recorded in
    DATA/prepare.json, order included (ids 0 and 1 follow it: a swapped pair would train with
    the languages' embeddings exchanged); a data directory without the record is taken as given."""
    langs = ",".join(parse_langs(langs))
    if not os.path.isfile(DataDir(data).prepare_json):
        return langs
    recorded = langs_from_prepare(data)
    if langs != recorded:
        raise TreLMError(f"--langs {langs}: {os.path.join(data, 'prepare.json')} records the pair {recorded} (source "
                         f"first): pass --langs {recorded}, or leave --langs out")
    return langs


def check_pair(src: str, tgt: str, src_option: str = "--src", tgt_option: str = "--tgt") -> None:
    """The rule of language_pair.parse_langs for two options: two different languages
    (checked before a preprocessing command writes anything)."""
    if src == tgt:
        raise TreLMError(f"{src_option} {src} and {tgt_option} {tgt}: expected two different languages "
                         "(the source language and the target language)")
