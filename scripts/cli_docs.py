"""docs/cli.md: every console script's options, generated from its build_parser().

    python scripts/cli_docs.py            # rewrite docs/cli.md
    python scripts/cli_docs.py --check    # exit 1 when docs/cli.md is stale (tests/test_cli_docs.py)

The console scripts are setup.py's entry points, in that order; the help text is argparse's at
a fixed width, so the file does not depend on the terminal that made it.
"""
import argparse
import difflib
import importlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "cli.md")
WIDTH = "100"
HEADER = """# Command-line reference

Every `trelm-*` console script with its options, as `--help` prints them. Generated from each
command's `build_parser()` by `python scripts/cli_docs.py`; `tests/test_cli_docs.py` fails when
this page is stale. fairseq's own commands (`fairseq-preprocess`, `fairseq-train --user-dir
trelm_fairseq`, `fairseq-hydra-train`) take the plugin's task, model and criterion options:
`fairseq-train --user-dir trelm_fairseq --task trelm_transfer --help`.
"""


def entry_points():
    """(command, module) pairs of setup.py's console scripts, in its order."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        return re.findall(r'"(trelm-[a-z-]+)=([\w.]+):cli_main"', f.read())


def render() -> str:
    os.environ["COLUMNS"] = WIDTH  # argparse wraps at the terminal's width
    sections = [HEADER, "| command | what it does |", "|---|---|"]
    bodies = []
    for command, module in entry_points():
        mod = importlib.import_module(module)
        parser = mod.build_parser()
        parser.prog = command  # as the console script names itself
        # the module doc's first paragraph, without its "trelm-x: " prefix
        summary = " ".join((mod.__doc__ or "").strip().split("\n\n")[0].split())
        summary = summary.split(": ", 1)[1] if summary.startswith(command + ":") else summary
        sections.append(f"| [`{command}`](#{command}) | {summary} |")
        help_text = parser.format_help().rstrip()
        bodies.append(f"## {command}\n\n```\n{help_text}\n```\n")
    return "\n".join(sections) + "\n\n" + "\n".join(bodies)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write (or --check) docs/cli.md from the commands' parsers.")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md differs from the parsers")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = open(OUT, encoding="utf-8").read() if os.path.isfile(OUT) else ""
        if current != text:
            diff = "".join(list(difflib.unified_diff(current.splitlines(True), text.splitlines(True), "docs/cli.md",
                                                     "the parsers now"))[:40])
            print(f"docs/cli.md is stale: run python scripts/cli_docs.py\n{diff}", file=sys.stderr)
            return 1
        return 0
    tmp = OUT + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
