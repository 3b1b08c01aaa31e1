"""The one rule for a language pair "S,T" (source first): the task, the stage runner, the
sweep and the probes all validate --langs here, and read the pair trelm-prepare recorded."""
import os
from typing import List

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
    path = os.path.join(data, "prepare.json")
    try:
        info = read_json(path, "prepare.json")
    except TreLMError:  # missing or not JSON: say what to do instead
        info = {}
    langs = info.get("langs") or info.get("languages") if isinstance(info, dict) else None
    if isinstance(langs, (list, tuple)):
        langs = ",".join(map(str, langs))
    if not isinstance(langs, str) or langs.count(",") != 1:
        raise TreLMError(f"--langs not given and {path} records no 'langs': {remedy}")
    return ",".join(parse_langs(langs))
