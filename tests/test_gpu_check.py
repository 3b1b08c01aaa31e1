"""benchmarks/gpu_check.py --quick: the one-shot accelerator check runs on CPU at tiny sizes, so
that it cannot rot before a GPU is lent (the figures are not checked here, the checks are)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def test_gpu_check_quick_runs_every_configuration_and_passes(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--json", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("baseline masked_lm/roberta", "commonality", "transfer_upper", "transfer_lower", "language_specific"):
        assert f"| {name} " in proc.stdout
    for check in ("PASS finite", "PASS frozen", "PASS single_device"):
        assert check in proc.stdout
    report = json.loads(out.read_text())
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["transfer_upper"]["frozen_params"] > 0 and by_name["transfer_upper"]["frozen_changed"] == []
    assert by_name["language_specific"]["frozen_params"] == 1  # only the null slot (no CdLM in stage 4)
    assert all(r["flops_per_s"] > 0 and r["tokens_per_s"] > 0 for r in report["results"])
    assert all(r["optimizer_impl"] in ("foreach", "fused") for r in report["results"])  # trelm_adamw really used


def test_gpu_check_refuses_a_full_run_without_cuda_and_knows_the_gpus():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import gpu_check

    assert gpu_check.device_peak("NVIDIA H100 80GB HBM3 SXM")[0] == "H100 SXM"
    assert gpu_check.device_peak("NVIDIA A100-SXM4-80GB")[1] == 312e12
    assert gpu_check.device_peak("NVIDIA L40S")[0] == "L40S"  # not L40 or L4
    assert gpu_check.device_peak("Some New Accelerator") is None
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr
