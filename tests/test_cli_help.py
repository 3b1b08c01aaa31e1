"""Every console script's --help (issue 16, item 14): each option (but -h) has a help
string, the usage names the console script (never `python -m ...`), and in the commands
whose help was filled in for the issue every option with a default says it."""
import argparse
import importlib
import re
from pathlib import Path

import pytest

SETUP = (Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8")
SCRIPTS = re.findall(r'"(trelm-[\w-]+)=(trelm_fairseq\.cli\.\w+):cli_main"', SETUP)
# the commands of the list: their help states every default
STATES_DEFAULTS = {name for name, _ in SCRIPTS}  # every command's help states its defaults


def options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield action.option_strings[0] if action.option_strings else action.dest, action


def states_default(parser, action) -> bool:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.required:
        return True
    if action.default in (None, argparse.SUPPRESS):
        return True  # "default: ..." is said in words where it matters
    text = action.help or ""
    return ("%(default)" in text or "default" in text.lower()
            or issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter))


def test_every_console_script_is_listed():
    assert len(SCRIPTS) >= 13 and ("trelm-map-embeddings", "trelm_fairseq.cli.map_embeddings") in SCRIPTS


@pytest.mark.parametrize("name,module", SCRIPTS, ids=[s for s, _ in SCRIPTS])
def test_every_option_has_help_and_the_usage_names_the_script(name, module):
    parser = importlib.import_module(module).build_parser()
    missing = [opt for opt, action in options(parser) if not (action.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"
    usage = parser.format_usage()
    assert usage.startswith(f"usage: {name} ") and "python -m" not in parser.format_help(), usage
    if name in STATES_DEFAULTS:
        silent = [opt for opt, action in options(parser) if not states_default(parser, action)]
        assert not silent, f"{name}: help does not say the default of {silent}"


def test_map_embeddings_help_says_what_is_reproducible():
    from trelm_fairseq.cli import map_embeddings

    text = "".join(map_embeddings.build_parser().format_help().split())  # argparse wraps at hyphens too
    assert "--deterministic" in text and "byte-identicalinit/model.pt" in text and "Hogwild" in text
