"""Module-classification data helpers (trelm_fairseq.classification)."""
import pytest

from trelm_fairseq import classification as cls
from trelm_fairseq.errors import TreLMError


def test_small_modules_merge_into_other():
    assert [cls.label_of(m) for m in ("scalc", "smath", "sdraw", "shared")] == ["scalc", "other", "other", "shared"]


def test_read_help_tsv_and_errors(tmp_path):
    good = tmp_path / "help.tr.train.tsv"
    good.write_text("scalc\tHücre biçimi\nschart\tGrafik türü\n\n", encoding="utf-8")
    assert cls.read_help_tsv(str(good)) == [("scalc", "Hücre biçimi"), ("other", "Grafik türü")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("scalc\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(TreLMError, match=r"bad.tsv:2: expected 'module<TAB>text'"):
        cls.read_help_tsv(str(bad))
    with pytest.raises(TreLMError, match="not found"):
        cls.read_help_tsv(str(tmp_path / "missing.tsv"))


def test_parse_accuracy_takes_the_summary_value():
    out = "x | valid on 'test' subset | loss 1.2 | accuracy 61.5 | wps 10\n"
    assert cls.parse_accuracy(out) == 61.5
    with pytest.raises(TreLMError, match="no accuracy"):
        cls.parse_accuracy("nothing here")


def test_commands_evaluate_every_sentence_with_the_test_language():
    ft = cls.finetune_command("d", "ck.pt", "out", "trelm_minilm", 10, lang_id=0, extra=["--tri-layer"])
    assert ft[ft.index("--default-lang-id") + 1] == "0" and ft[-1] == "--tri-layer"
    assert ft[ft.index("--required-batch-size-multiple") + 1] == "1"
    ev = cls.evaluate_command("d", "ck.pt", lang_id=1)
    assert ev[ev.index("--required-batch-size-multiple") + 1] == "1"
    assert "'default_lang_id': 1" in ev[ev.index("--model-overrides") + 1]
