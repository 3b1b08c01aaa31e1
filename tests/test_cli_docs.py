"""docs/cli.md is generated from every console script's build_parser() and must be current."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def test_the_cli_reference_matches_the_parsers():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "cli_docs.py"), "--check"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    for command in ("trelm-prepare", "trelm-stages", "trelm-export", "trelm-fill-mask", "trelm-demo"):
        assert f"## {command}\n" in text and f'"{command}=' in setup
    assert "--max-suspect-pairs" in text and "--alignment-check" in text  # options reach the page
