"""experiments/recipe_ablation.py: config names, the plans they build, and the grid's verdicts."""
import importlib.util
import json
import os

import pytest
import torch

from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint
from trelm_fairseq.comparison import Budgets
from trelm_fairseq.tasks.trelm_transfer import TreLMTransferConfig
from fairseq.data import Dictionary

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("recipe_ablation",
                                                  os.path.join(HERE, "..", "experiments", "recipe_ablation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(tmp_path):
    d = Dictionary()
    for i in range(20):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    cfg = model_config("trelm_tiny", tri_layer=True)
    save_checkpoint(str(tmp_path / "data" / "init" / "model.pt"), build_model(cfg, d), cfg)
    return str(tmp_path / "data")


def test_default_and_the_component_modifiers(ablation):
    c = ablation.config("default")
    assert c == ablation.config(ablation.DEFAULT)
    assert (c["freeze"], c["mlm_lang"], c["pooling"], c["identity_emb"], c["lr1"]) == (True, False, False, False, 1e-3)
    assert ablation.config("default+no_stage1")["graph"] == "trelm_no_stage1"
    assert ablation.config("default+only_2a")["graph"] == "trelm_2a_only"
    assert ablation.config("default+mlm_lang")["mlm_lang"] is True
    assert ablation.config("default+adv=0")["adv_weight"] == 0.0
    for name in ablation.GRID:
        ablation.config(name)  # every grid entry parses
    with pytest.raises(SystemExit, match="unknown config 'no_stage2'.*no_stage1"):
        ablation.config("default+no_stage2")


def _args(cmd, flag):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_plans_of_the_grid(ablation, data_dir, tmp_path):
    budgets = Budgets()
    init = os.path.join(data_dir, "init", "model.pt")

    def plan(name):
        return ablation.plan_for(ablation.config(name), data_dir, str(tmp_path / name), init, "tr", 1, budgets)

    full = plan("default")
    assert list(full.specs) == ["1", "2a", "2b", "3", "4"] and full.combine_average == "trained"
    assert _args(full.stages["1"].command(), "--lr") == ["0.0005", "0.001"]  # the last one wins: stage 1 at 2x
    # "default" is the main job's recipe: 2b's MLM part as the task's default
    assert _args(full.stages["2b"].command(), "--transfer-mlm-lang") == ["predicted"]
    assert TreLMTransferConfig.transfer_mlm_lang == "predicted"
    assert list(plan("default+no_stage1").specs) == ["2a", "2b", "3", "4"]
    assert list(plan("default+only_2a").specs) == ["1", "2a", "4"]
    assert plan("default+average_every").combine_average == "every"
    assert _args(plan("default+identity_order").stages["2b"].command(), "--cdlm-order") == ["identity"]
    assert _args(plan("default+tlm").stages["2a"].command(), "--transfer-objective") == ["tlm"]
    assert _args(plan("default+mlm_lang").stages["2b"].command(), "--transfer-mlm-lang") == ["target"]
    assert _args(plan("default+adv=0").stages["1"].command(), "--adv-weight") == ["0.0"]
    # configs that differ after stage 1 share it; a different adversarial weight does not
    key = ablation.stage1_key
    assert key(ablation.config("default"), 1) == key(ablation.config("default+identity_order"), 1)
    assert key(ablation.config("default"), 1) != key(ablation.config("default+adv=0"), 1)


def _rows(config, values, stage="4"):
    return [{"config": config, "seed": s, "stage": stage, "target_mlm_bits": mlm, "p1_lower": p1, "p1_top": p1,
             "langid": 0.9} for s, (mlm, p1) in enumerate(values, 1)]


def test_verdicts_compare_each_component_with_the_full_recipe(ablation, tmp_path):
    rows = (_rows("default", [(9.0, 0.30), (9.1, 0.32), (9.05, 0.31)])
            # without the adversarial term: within the noise
            + _rows("default+adv=0", [(9.02, 0.31), (9.08, 0.30), (9.06, 0.32)])
            # without stage 1: target MLM clearly worse, retrieval clearly worse -> stage 1 helps
            + _rows("default+no_stage1", [(9.6, 0.20), (9.7, 0.21), (9.65, 0.19)])
            # identity order: retrieval better, MLM the same -> the re-ordering hurts retrieval
            + _rows("default+identity_order", [(9.0, 0.40), (9.1, 0.42), (9.05, 0.41)])
            + _rows("default+tlm", [(8.0, 0.9)])  # one seed: not judged
            # TreLM on another init: judged against the map's init; a combination is not
            + _rows("default+init=focus", [(9.0, 0.20), (9.1, 0.22), (9.05, 0.21)])
            + _rows("default+init=focus+adv=0", [(9.0, 0.20), (9.1, 0.22), (9.05, 0.21)]))
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = ablation.verdicts(str(path))
    line = {l.split(" | ")[0].strip("| "): l for l in text.splitlines() if l.startswith("| ")}
    assert "Holm-adjusted p < 0.05 over the 12 comparisons of this table" in text
    assert line["adversarial term"].endswith("no measurable effect |")
    assert "helps (without it: worse target MLM (bits), P@1 lower, P@1 top)" in line["stage 1 (commonality)"]
    assert "+0.600*" in line["stage 1 (commonality)"]
    assert "hurts (without it: better P@1 lower, P@1 top)" in line["TRILayer re-ordering by the alignment"]
    assert line["CdLM in 2a and 2b"].endswith("one seed: not judged |")
    assert "stage 2b and combine" not in line  # not run: no line
    assert line["the least-squares map's init"].startswith("| the least-squares map's init | the focus init | 3 |")
    assert "helps (without it: worse P@1 lower, P@1 top)" in line["the least-squares map's init"]
    assert "init=focus+adv=0" not in text and text.count("the focus init") == 1

    dest = tmp_path / "results"
    rows[0]["recipe"] = ablation.recipe("default")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ablation.write_results(str(tmp_path), str(dest), list(ablation.GRID))
    md = (dest / "results.md").read_text()
    assert "\ndefault = freeze=True, " in md and "lr1=0.001" in md  # what "default" meant
    assert "**Verdicts" in md and "**target valid MLM" in md
    assert (dest / "results.jsonl").read_text() == path.read_text()


def test_init_modifier_starts_from_another_init_checkpoint(ablation, data_dir, tmp_path):
    c = ablation.config("default+init=focus")
    assert c["init"] == "focus"
    assert ablation.stage1_key(c, 1) != ablation.stage1_key(ablation.config("default"), 1)
    with pytest.raises(SystemExit, match=r"init=focus: .*init-focus/model.pt does not exist.*--method focus"):
        ablation.init_variant(data_dir, str(tmp_path / "v.pt"), c, 1)
    os.makedirs(os.path.join(data_dir, "init-focus"))
    state = torch.load(os.path.join(data_dir, "init", "model.pt"), weights_only=False)
    state["model"]["encoder.embed_tokens.weight"] += 1.0  # tell the two apart
    torch.save(state, os.path.join(data_dir, "init-focus", "model.pt"))
    out = torch.load(ablation.init_variant(data_dir, str(tmp_path / "v.pt"), c, 1), weights_only=False)
    assert torch.equal(out["model"]["encoder.embed_tokens.weight"], state["model"]["encoder.embed_tokens.weight"])
    with pytest.raises(SystemExit, match="unknown config 'init=../x'"):
        ablation.config("default+init=../x")


def test_a_rerun_refuses_rows_written_for_another_recipe(ablation, tmp_path):
    path = str(tmp_path / "results.jsonl")
    now = {"config": "default+adv=0", "recipe": ablation.recipe("default+adv=0"), "seed": 1, "stage": "1",
           "split": "valid"}
    ablation.check_recipes(path, [now], ["default+adv=0"])  # same recipe: resumes
    then = dict(now, recipe=dict(now["recipe"], mlm_lang=not now["recipe"]["mlm_lang"]))
    with pytest.raises(SystemExit, match=r"results.jsonl, line 2: config 'default\+adv=0' was measured with another "
                                         r"recipe \(mlm_lang=.* then, .* now\): use a new --out"):
        ablation.check_recipes(path, [now, then], ["default+adv=0"])
    legacy = {k: v for k, v in now.items() if k != "recipe"}
    with pytest.raises(SystemExit, match="line 1: config 'default\\+adv=0' has rows without their recipe"):
        ablation.check_recipes(path, [legacy], ["default+adv=0"])
    ablation.check_recipes(path, [legacy, then], ["default"])  # rows of configs not run now: not checked
    assert ablation.recipe("mlm_continued") == {"mlm_continued": True}
    # rows probed on the test pairs (before the evidence protocol) are never resumed into valid rows
    with pytest.raises(SystemExit, match=r"line 1: probed on the test pairs; today's rows are valid-split"):
        ablation.check_recipes(path, [{k: v for k, v in now.items() if k != "split"}], ["default+adv=0"])
