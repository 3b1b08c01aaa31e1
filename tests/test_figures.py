"""scripts/figures.py: every figure a document links to a committed row is checked against it,
generated blocks are regenerated from their rows, and the repository's documents pass."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def figures(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("figures", os.path.join(ROOT, "scripts", "figures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", str(tmp_path))
    (tmp_path / "results" / "run").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "results" / "run" / "results.json").write_text(json.dumps({
        "prepare": {"mapping": {"mapped": 12361, "p1": 0.13805970149253732}},
        "probes": [{"model": "trelm", "point": "final", "lower": {"p1": 0.3944}},
                   {"model": "mlm", "point": "final", "lower": {"p1": 0.205}}]}))
    (tmp_path / "results" / "run" / "rows.jsonl").write_text("".join(
        json.dumps({"config": "default", "seed": s, "bits": b}) + "\n" for s, b in ((1, 9.0), (2, 9.2), (3, 9.4))))
    return module


def _doc(tmp_path, text):
    path = tmp_path / "docs" / "page.md"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_linked_figures_that_match_their_rows_pass(figures, tmp_path):
    R, J = "../results/run/results.json", "../results/run/rows.jsonl"
    doc = _doc(tmp_path, f'Mapped [12,361]({R} "prepare.mapping.mapped") tokens, P@1 [0.138]({R} "prepare.mapping.p1"),\n'
                         f'[13.8%]({R} "prepare.mapping.p1 *100"), TreLM [0.394]({R} "probes[model=trelm,point=final].lower.p1"),\n'
                         f'mean [9.20]({J} "mean:[config=default].bits") over [3]({J} "n:[config=default].bits") seeds.\n')
    problems, checked = figures.check_document(doc)
    assert problems == [] and checked == 6


@pytest.mark.parametrize("link, message", [
    ('[12,395](../results/run/results.json "prepare.mapping.mapped")', "the row says 12361"),
    ('[0.134](../results/run/results.json "prepare.mapping.p1")', "the row says 0.13806"),
    ('[0.1](../results/run/results.json "prepare.mapping.nope")', "no key 'nope'"),
    ('[0.1](../results/run/results.json "probes[model=xlm].lower.p1")', "matches nothing"),
    ('[9.2](../results/run/rows.jsonl "[config=default].bits")', "gives 3 values; name an aggregate"),
    ('[9.2](../results/run/missing.json "a")', "no such file"),
    ('[9.2](../README.json "a")', "figures link to committed rows under results/"),
])
def test_a_figure_that_disagrees_with_its_row_is_named_with_its_line(figures, tmp_path, link, message):
    doc = _doc(tmp_path, "Intro.\n\nSee " + link + " here.\n")
    problems, _ = figures.check_document(doc)
    assert len(problems) == 1 and problems[0].startswith("docs/page.md:3: ") and message in problems[0], problems


def test_a_generated_block_is_checked_and_rewritten(figures, tmp_path):
    report = tmp_path / "results" / "run" / "report.md"
    report.write_text("# r\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n\n| c |\n|---|\n| 3 |\n")
    doc = _doc(tmp_path, "Before.\n<!-- figures: report-table ../results/run/report.md 2 -->\n| c |\n|---|\n| 4 |\n"
                         "<!-- /figures -->\nAfter.\n")
    problems, _ = figures.check_document(doc)
    assert len(problems) == 1 and "docs/page.md:2: the block 'report-table" in problems[0]
    assert figures.check_document(doc, write=True)[0] == []
    text = open(doc).read()
    assert "| c |\n|---|\n| 3 |\n<!-- /figures -->" in text and text.startswith("Before.") and text.endswith("After.\n")
    assert figures.check_document(doc) == ([], 1)
    doc = _doc(tmp_path, "<!-- figures: no-such-generator x -->\n<!-- /figures -->\n")
    assert "unknown generator 'no-such-generator'" in figures.check_document(doc)[0][0]


def test_the_repository_documents_match_their_rows():
    """README.md and docs/: every linked figure and generated block against results/, and the
    experiments' reports regenerated from their committed rows."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "figures.py")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 wrong" in out.stderr and int(out.stderr.split("figures: ")[1].split()[0]) >= 50


def test_a_relative_link_to_a_missing_file_is_named(figures, tmp_path):
    (tmp_path / "docs" / "there.md").write_text("x")
    doc = _doc(tmp_path, "[ok](there.md#a-section) [web](https://example.org) [anchor](#top)\n"
                         "[gone](studies/gone.md)\n")
    problems, _ = figures.check_document(doc)
    assert problems == ["docs/page.md:2: link to studies/gone.md: no such file"]
