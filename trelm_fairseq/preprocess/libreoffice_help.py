"""LibreOffice help pages (Debian `libreoffice-help-*`) as a parallel, module-labelled corpus.

Fetching: `apt-get download <package>` into `<cache>/debs/`, `dpkg-deb -x` into
`<cache>/extract/<package>/` (marked complete by a `.complete` file, so an interrupted
extraction is redone and a complete one is reused without downloading again).

Parsing: a help page is `usr/share/libreoffice/help/<dir>/text/<module>/**/*.html`.
Every `<p>`, `<h1>`..`<h6>`, `<td>`, `<th>`, `<li>` with an `id` attribute inside the
page's display area is one paragraph (the outermost one when they nest); its key is
(path relative to `text/`, id, occurrence of that id in the file) and its text the visible
text: entities unescaped, whitespace collapsed, `<br>` as a space, images' alt text and
scripts left out, and of an inline platform switch (`<span class="switchinline">`, e.g.
"Command" on macOS vs "Ctrl") only the default variant kept.  The module label is the first
path component under `text/` (scalc, swriter, shared, sbasic, simpress, ...).

Alignment: en-US and target paragraphs with the same key form a pair; pairs whose target
equals the English (untranslated), with a side without letters, or repeating an earlier
(en, target) text pair are dropped.
"""
import glob
import html
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from trelm_fairseq import fileio
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.fileio import has_letter, normalize_space

HELP_ROOT = "usr/share/libreoffice/help"
_BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "li"}
_SKIP_TAGS = {"script", "style", "noscript", "img"}
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")

Key = Tuple[str, str, int]          # (relative html path, element id, occurrence)


# ----------------------------------------------------------------------------- fetching

def _run(cmd, cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise TreLMError(
            f"{cmd[0]} not found: fetching LibreOffice help needs Debian's apt-get and "
            f"dpkg-deb (or pass your own text with --parallel/--mono)") from e


def download_deb(package: str, cache_dir: str, log=print) -> str:
    """Return the path of `<package>_*.deb` in `<cache_dir>/debs`, downloading it if absent."""
    deb_dir = os.path.join(cache_dir, "debs")
    fileio.make_dirs(deb_dir)
    fileio.remove_stale_temporaries(deb_dir)  # downloads of killed runs
    found = sorted(glob.glob(os.path.join(deb_dir, f"{package}_*.deb")))
    if found:
        return found[-1]
    log(f"downloading {package} (apt-get download) ...")
    # Download into a fresh directory first: a deb only appears in the cache when complete.
    with fileio.temporary_folder(os.path.join(deb_dir, "download")) as tmp:
        proc = _run(["apt-get", "download", package], cwd=tmp)
        debs = glob.glob(os.path.join(tmp, f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise TreLMError(
                f"apt-get download {package} failed (exit {proc.returncode}): {tail}\n"
                f"expected the package in the apt lists: run `apt-get update` first "
                f"(check with `apt-cache policy {package}`)")
        dest = os.path.join(deb_dir, os.path.basename(debs[0]))
        fileio.replace(debs[0], dest)
    return dest


def extract_deb(deb: str, package: str, cache_dir: str, log=print) -> str:
    """`dpkg-deb -x` the deb into `<cache_dir>/extract/<package>`; reused when complete."""
    dest = os.path.join(cache_dir, "extract", package)
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if f.read().strip() == os.path.basename(deb):
                return dest
    log(f"extracting {os.path.basename(deb)} ...")
    shutil.rmtree(dest, ignore_errors=True)
    fileio.make_dirs(dest)
    proc = _run(["dpkg-deb", "-x", deb, dest])
    if proc.returncode != 0:
        raise TreLMError(f"dpkg-deb -x {deb} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()} (delete the file to download it again)")
    fileio.write_text(marker, os.path.basename(deb) + "\n")
    return dest


def fetch_package(package: str, cache_dir: str, log=print) -> Tuple[str, str]:
    """Download (if needed) and extract (if needed) a package: (deb path, extract root)."""
    deb = download_deb(package, cache_dir, log)
    return deb, extract_deb(deb, package, cache_dir, log)


def help_text_dir(extract_root: str, help_dir: str) -> str:
    path = os.path.join(extract_root, HELP_ROOT, help_dir, "text")
    if not os.path.isdir(path):
        raise TreLMError(f"{path}: missing (expected the help pages of {help_dir!r} in the "
                         f"extracted package)")
    return path


# ----------------------------------------------------------------------------- parsing

@dataclass
class Paragraph:
    key: Key
    module: str
    text: str


def _visible_text(elem, parts: List[str]) -> None:
    """Append the visible text of `elem`'s content (not its tail) to `parts`."""
    if elem.text:
        parts.append(elem.text)
    switch = "switchinline" in (elem.get("class") or "").split()
    for child in elem:
        tag = child.tag if isinstance(child.tag, str) else ""   # comments have callable tags
        skip = tag in _SKIP_TAGS or not tag
        # A platform switch holds one hidden span per case (class="MAC", "WIN", ...) and
        # the default case (no class); the help viewer's script shows exactly one.
        if switch and child.get("class"):
            skip = True
        if tag == "br":
            parts.append(" ")
        elif not skip:
            _visible_text(child, parts)
        if child.tail:
            parts.append(child.tail)


def clean_text(text: str) -> str:
    """Whitespace-normalise; unescape entities that survived as literal text
    (double-escaped in the source, e.g. `&amp;gt;`)."""
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return normalize_space(text)


def parse_html(path: str, rel_path: str) -> List[Paragraph]:
    """All id'd paragraphs of one help page, in document order."""
    import lxml.html  # imported here: only the help fetcher needs lxml

    try:
        with open(path, "rb") as f:
            data = f.read()
        # The pages are UTF-8; say so, as lxml would guess Latin-1 without a <meta> charset.
        parser = lxml.html.HTMLParser(encoding="utf-8")
        root = lxml.html.fromstring(data, parser=parser) if data.strip() else None
    except (OSError, ValueError) as e:
        raise TreLMError(f"{path}: cannot parse as HTML: {e}") from e
    if root is None:
        return []
    area = root.get_element_by_id("DisplayArea", None)
    if area is None:
        area = root
    module = rel_path.split("/", 1)[0]
    seen: Counter = Counter()
    out: List[Paragraph] = []

    def walk(elem):
        for child in elem:
            tag = child.tag if isinstance(child.tag, str) else ""
            if not tag or tag in _SKIP_TAGS:
                continue
            ident = child.get("id")
            if tag in _BLOCK_TAGS and ident:
                parts: List[str] = []
                _visible_text(child, parts)
                n = seen[ident]
                seen[ident] += 1
                out.append(Paragraph((rel_path, ident, n), module, clean_text("".join(parts))))
            else:
                walk(child)

    walk(area)
    return out


def parse_help_dir(text_dir: str) -> Dict[Key, Paragraph]:
    """Parse every page under a help `text/` directory: key -> paragraph."""
    out: Dict[Key, Paragraph] = {}
    for path in sorted(glob.glob(os.path.join(text_dir, "**", "*.html"), recursive=True)):
        rel = os.path.relpath(path, text_dir).replace(os.sep, "/")
        for para in parse_html(path, rel):
            out[para.key] = para
    return out


# ----------------------------------------------------------------------------- alignment

@dataclass
class AlignStats:
    en_paragraphs: int = 0
    tgt_paragraphs: int = 0
    common_keys: int = 0
    no_letters: int = 0
    untranslated: int = 0
    duplicate: int = 0
    pairs: int = 0


@dataclass
class HelpPair:
    en: str
    tgt: str
    module: str          # most frequent module among the pair's occurrences
    key: Key             # first occurrence


def align(en: Dict[Key, Paragraph], tgt: Dict[Key, Paragraph],
          stats: Optional[AlignStats] = None) -> List[HelpPair]:
    """Pair paragraphs by key; drop untranslated, letterless and duplicate text pairs.

    Output order: first occurrence in (path, id) order, so it is deterministic."""
    stats = stats if stats is not None else AlignStats()
    stats.en_paragraphs, stats.tgt_paragraphs = len(en), len(tgt)
    groups: Dict[Tuple[str, str], List[Paragraph]] = {}
    for key in sorted(en.keys() & tgt.keys()):
        stats.common_keys += 1
        e, t = en[key].text, tgt[key].text
        if not has_letter(e) or not has_letter(t):
            stats.no_letters += 1
        elif e == t:
            stats.untranslated += 1
        elif (e, t) in groups:
            stats.duplicate += 1
            groups[(e, t)].append(en[key])
        else:
            groups[(e, t)] = [en[key]]
    pairs = []
    for (e, t), paras in groups.items():
        pairs.append(HelpPair(e, t, majority_module(paras), paras[0].key))
    stats.pairs = len(pairs)
    return pairs


def majority_module(paras: List[Paragraph]) -> str:
    """The most frequent module; ties go to the first seen (deterministic)."""
    counts = Counter(p.module for p in paras)
    best = max(counts.values())
    return next(p.module for p in paras if counts[p.module] == best)


def labelled_paragraphs(paras: Dict[Key, Paragraph], exclude: Optional[Dict[Key, Paragraph]] = None
                        ) -> Tuple[List[Tuple[str, str]], Dict[str, int]]:
    """(module, text) rows for classification: one row per distinct text with letters.

    Texts seen under several modules are dropped (an unlearnable label); with `exclude`
    (the English pages, for a target language), texts equal to the English paragraph of
    the same key are dropped as untranslated."""
    by_text: Dict[str, set] = {}
    order: List[str] = []
    untranslated = 0
    for key in sorted(paras):
        p = paras[key]
        if not has_letter(p.text):
            continue
        if exclude is not None and key in exclude and exclude[key].text == p.text:
            untranslated += 1
            continue
        if p.text not in by_text:
            by_text[p.text] = set()
            order.append(p.text)
        by_text[p.text].add(p.module)
    rows = [(next(iter(by_text[t])), t) for t in order if len(by_text[t]) == 1]
    return rows, {"rows": len(rows), "ambiguous_module": len(order) - len(rows),
                  "untranslated": untranslated}
