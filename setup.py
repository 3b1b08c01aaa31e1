from setuptools import find_packages, setup

setup(
    name="trelm-fairseq",
    version="0.1.0",
    description="TreLM: transfer a pre-trained English encoder to a new language, as a fairseq plugin",
    packages=find_packages(include=["trelm_fairseq", "trelm_fairseq.*"]),
    python_requires=">=3.10",
    # Runtime dependencies are pinned in requirements.txt (torch and fairseq-fixed need a
    # particular install order, see the Makefile); only the light ones are declared here.
    install_requires=["safetensors", "sentencepiece", "numpy"],
    extras_require={
        # NVIDIA apex is optional: torch's fused AdamW and bf16 autocast cover the GPU fast path.
        "apex": [],
    },
    entry_points={
        "console_scripts": [
            "trelm-import=trelm_fairseq.cli.import_model:cli_main",
        ],
    },
)
