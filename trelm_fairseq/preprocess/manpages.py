"""Monolingual text from translated man pages (Debian `manpages-<lang>`, groff sources).

No groff needed: a reasonable regex clean-up is enough for language-model text.
- comments, `.ig`/`.de` blocks, tables (`.TS`/`.TE`) and no-fill / example regions
  (`.nf`/`.fi`, `.EX`/`.EE`: mostly code) are dropped, as is `.TH`;
- font-style macros (`.B`, `.IR`, `.SH`, ...) keep their arguments as text, any other
  request ends the current paragraph; consecutive text lines are joined into one paragraph;
  the tag line after `.TP` is a paragraph of its own;
- escapes: fonts/sizes/strings/registers removed, common special characters mapped
  (`\\(em` -> an em dash, `\\-` -> "-", ...);
- a paragraph is kept when more than half its non-space characters are letters (drops
  option lists like "-a, --all" and code fragments).
Symlinks and `.so` redirects are skipped (they duplicate another page); a page that is not
valid UTF-8 is skipped and counted.
"""
import gzip
import os
import re
from typing import Dict, Iterator, List

_FONT_MACROS = {"B", "I", "SM", "SB", "SH", "SS"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}   # words alternate fonts, no spaces
_SKIP_UNTIL = {".ig": "..", ".de": "..", ".am": "..", ".TS": ".TE", ".nf": ".fi",
               ".EX": ".EE", ".EQ": ".EN", ".PS": ".PE"}
_SPECIAL = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", ">=": "≥",
    "<=": "≤", "!=": "≠", "->": "→", "<-": "←", "de": "°", "ti": "~", "ha": "^", "bv": "|",
    "ba": "|", "sl": "/", "rs": "\\", "at": "@", "sh": "#", "Do": "$", "pl": "+", "eq": "=",
    "fo": "«", "fc": "»", "Fo": "«", "Fc": "»",
}
_ESCAPES = [
    (re.compile(r'\\["#].*$'), ""),                                      # comment
    (re.compile(r"\\[e\\]"), "\0"),                  # literal backslash, restored at the end
    (re.compile(r"\\[fF](\[[^\]]*\]|\(..|.)"), ""),                     # font
    (re.compile(r"\\s(\[[^\]]*\]|\(..|[+-]?\d+)"), ""),                 # size
    (re.compile(r"\\[*nkgmM](\[[^\]]*\]|\(..|.)"), ""),                 # strings, registers
    (re.compile(r"\\[hvlLwoDXbZR]'[^']*'"), ""),                        # motions, widths
    (re.compile(r"\\\((..)"), lambda m: _SPECIAL.get(m.group(1), "")),  # \(xx
    (re.compile(r"\\\[([^\]]*)\]"), lambda m: _SPECIAL.get(m.group(1), "")),
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&c/,|^%:)!{}]"), ""),
    (re.compile(r"\\(.)"), r"\1"),                                       # anything else
    (re.compile("\0"), "\\\\"),
]
_ARG = re.compile(r'"([^"]*)"|(\S+)')


def strip_escapes(line: str) -> str:
    for pattern, repl in _ESCAPES:
        line = pattern.sub(repl, line)
    return line


def _macro_text(name: str, args: str) -> str:
    words = [quoted or bare for quoted, bare in _ARG.findall(args)]
    return ("" if name in _ALTERNATING else " ").join(words)


def groff_paragraphs(source: str) -> List[str]:
    """Plain-text paragraphs of one man page's groff source."""
    paragraphs: List[str] = []
    current: List[str] = []
    skip_until = None
    tag_next = False       # after .TP the next line is the tag ("-a, --all"): its own paragraph

    def flush():
        if current:
            paragraphs.append(" ".join(" ".join(current).split()))
            current.clear()

    for line in source.splitlines():
        if skip_until is not None:
            if line.strip().startswith(skip_until):
                skip_until = None
            continue
        if line[:1] in (".", "'"):
            parts = line[1:].strip().split(None, 1)
            name = parts[0] if parts else ""
            args = parts[1] if len(parts) > 1 else ""
            if "." + name in _SKIP_UNTIL:
                flush()
                skip_until = _SKIP_UNTIL["." + name]
            elif name == "so":
                return []              # redirect to another page
            elif name in _FONT_MACROS or name in _ALTERNATING:
                text = strip_escapes(_macro_text(name, args))
                if name in ("SH", "SS"):
                    flush()
                    paragraphs.append(" ".join(text.split()))
                else:
                    current.append(text)
                    if tag_next:
                        flush()
                        tag_next = False
            else:
                flush()                # .PP, .TP, .sp, .br, .TH, mdoc macros, ...
                tag_next = name == "TP"
        elif not line.strip():
            flush()
        else:
            current.append(strip_escapes(line))
            if tag_next:
                flush()
                tag_next = False
    flush()
    return [p for p in paragraphs if _mostly_letters(p)]


def _mostly_letters(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and 2 * sum(c.isalpha() for c in chars) > len(chars)


def iter_man_pages(man_dir: str) -> Iterator[str]:
    """Paths of the regular man page files (gzipped or not) under `man_dir`, sorted."""
    for dirpath, dirnames, filenames in os.walk(man_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                yield path


def manpage_paragraphs(man_dir: str, stats: Dict[str, int]) -> List[str]:
    """All paragraphs of all pages under `man_dir`; counts pages read/skipped in `stats`."""
    out: List[str] = []
    for path in iter_man_pages(man_dir):
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                source = f.read().decode("utf-8")
        except (UnicodeDecodeError, OSError, EOFError):
            stats["pages_skipped"] = stats.get("pages_skipped", 0) + 1
            continue
        stats["pages"] = stats.get("pages", 0) + 1
        out.extend(groff_paragraphs(source))
    stats["paragraphs"] = stats.get("paragraphs", 0) + len(out)
    return out
