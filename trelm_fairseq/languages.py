"""Supported target languages and the per-language facts the preprocess tools need.

A language code is the lower-case suffix of Debian's `libreoffice-help-<code>` package
(`tr`, `de`, `zh-cn`, `pt-br`, ...).  Every code listed here was checked with
`apt-cache policy libreoffice-help-<code>` on Debian bookworm (LibreOffice 7.4); the
`manpages-*` packages were checked with `apt-cache search '^manpages-'`.  One package holds no
pages of its own: `libreoffice-help-sk` only links `help/sk` to the Czech pages, so sk has no
help corpus (`help_links_to`) and is not offered for one; it stays usable with your own files.
`scripts/check_languages.py` fetches every help corpus and builds its vocabulary.

    >>> get_language("tr").manpages_package
    'manpages-tr'
    >>> lower("İSTANBUL IRMAK", "tr")
    'istanbul ırmak'
"""
from dataclasses import dataclass
from typing import Optional

from trelm_fairseq.errors import TreLMError
from trelm_fairseq.fileio import normalize_space

SOURCE_LANG = "en"
SOURCE_HELP_PACKAGE = "libreoffice-help-en-us"
SOURCE_HELP_DIR = "en-US"


@dataclass(frozen=True)
class Language:
    code: str                      # our code, e.g. "zh-cn"
    name: str
    help_dir: str                  # directory under /usr/share/libreoffice/help/, e.g. "zh-CN"
    manpages_package: Optional[str] = None   # Debian package with translated man pages
    manpages_dir: Optional[str] = None       # its directory under /usr/share/man/
    spaces_between_words: bool = True        # False: word counts / word alignment need
                                             # character-level splitting (zh, ja, ...)
    help_links_to: Optional[str] = None      # Debian's help package only links to this
                                             # language's pages: no help corpus of its own

    @property
    def help_package(self) -> str:
        return f"libreoffice-help-{self.code}"


def _lang(code, name, man=None, spaces=True, help_links_to=None):
    # Debian's help directory is "xx" or "xx-YY"; man page directories use "xx" or "xx_YY".
    lang, _, region = code.partition("-")
    help_dir = f"{lang}-{region.upper()}" if region else lang
    man_pkg = man_dir = None
    if man is not None:
        man_pkg = f"manpages-{man}"
        man_dir = f"{lang}_{region.upper()}" if region else lang
    return Language(code, name, help_dir, man_pkg, man_dir, spaces, help_links_to)


# code -> Language.  manpages column: the manpages-<x> package name suffix, None if Debian
# has no translated man pages for the language (manpages-pt is an empty dummy package).
LANGUAGES = {
    lang.code: lang
    for lang in [
        _lang("ca", "Catalan"),
        _lang("cs", "Czech", man="cs"),
        _lang("da", "Danish", man="da"),
        _lang("de", "German", man="de"),
        _lang("el", "Greek", man="el"),
        _lang("es", "Spanish", man="es"),
        _lang("et", "Estonian"),
        _lang("eu", "Basque"),
        _lang("fi", "Finnish", man="fi"),
        _lang("fr", "French", man="fr"),
        _lang("gl", "Galician"),
        _lang("hi", "Hindi"),
        _lang("hu", "Hungarian", man="hu"),
        _lang("id", "Indonesian", man="id"),
        _lang("it", "Italian", man="it"),
        _lang("ja", "Japanese", man="ja", spaces=False),
        _lang("km", "Khmer", spaces=False),
        _lang("ko", "Korean"),
        _lang("nl", "Dutch", man="nl"),
        _lang("pl", "Polish", man="pl"),
        _lang("pt", "Portuguese"),
        _lang("pt-br", "Brazilian Portuguese", man="pt-br"),
        _lang("ru", "Russian", man="ru"),
        _lang("sk", "Slovak", help_links_to="cs"),   # bookworm: help/sk -> cs, no Slovak pages
        _lang("sl", "Slovenian"),
        _lang("sv", "Swedish", man="sv"),
        _lang("tr", "Turkish", man="tr"),
        _lang("vi", "Vietnamese", man="vi"),
        _lang("zh-cn", "Chinese (Simplified)", man="zh", spaces=False),
        _lang("zh-tw", "Chinese (Traditional)", man="zh", spaces=False),
    ]
}


def help_corpus_languages():
    """Codes with a LibreOffice help corpus of their own (the ones trelm-fetch-corpus offers)."""
    return sorted(c for c, lang in LANGUAGES.items() if lang.help_links_to is None)


def get_language(code: str) -> Language:
    """Look up a target language by code (case-insensitive; `zh_CN` works too)."""
    key = code.strip().lower().replace("_", "-")
    if key not in LANGUAGES:
        raise TreLMError(
            f"unknown language code {code!r}: expected one of {', '.join(sorted(LANGUAGES))} "
            f"(the suffix of Debian's libreoffice-help-<code> package)"
        )
    return LANGUAGES[key]


# Languages whose dotted/dotless i need their own case mapping.
_DOTTED_I_LANGS = {"tr", "az"}
_TR_LOWER = str.maketrans({"I": "ı", "İ": "i"})


def lower(text: str, lang: str) -> str:
    """Lower-case `text` by the rules of `lang`.

    Turkish/Azerbaijani: I -> ı and İ -> i.  Plain `str.lower()` would turn İ into
    "i" + U+0307 (combining dot) and I into i, which breaks an uncased model's vocabulary.
    Greek final sigma is already handled by `str.lower()`."""
    base = lang.strip().lower().replace("_", "-").split("-")[0]
    if base in _DOTTED_I_LANGS:
        text = text.translate(_TR_LOWER)
    return text.lower()


def check_language(lang: str, what: str = "language") -> str:
    """A supported language code, normalised; the source may be en."""
    if lang.strip().lower() == SOURCE_LANG:
        return SOURCE_LANG
    try:
        return get_language(lang).code
    except TreLMError as e:
        raise TreLMError(f"{what}: {e}") from None


def spaces_between_words(lang: str) -> bool:
    if lang == SOURCE_LANG:
        return True
    return get_language(lang).spaces_between_words


def normalize_line(line: str, lang: str, lower_case: bool) -> str:
    """Collapse all (Unicode) whitespace to single spaces; lower-case if asked.

    Collapsing here also guarantees that no piece contains a character that
    fairseq's tokenizer (``\\s+``) would split on, so piece counts and the
    binarized lengths agree exactly.
    """
    line = normalize_space(line)
    return lower(line, lang) if lower_case else line
