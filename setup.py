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
            "trelm-combine=trelm_fairseq.cli.combine:cli_main",
            "trelm-stages=trelm_fairseq.cli.stages:cli_main",
            "trelm-parse-eval=trelm_fairseq.cli.parse_eval:cli_main",
            "trelm-parse-prepare=trelm_fairseq.cli.parse_prepare:cli_main",
            "trelm-demo=trelm_fairseq.cli.demo:cli_main",
            "trelm-sweep=trelm_fairseq.cli.sweep:cli_main",
            "trelm-fetch-corpus=trelm_fairseq.cli.fetch_corpus:cli_main",
            "trelm-vocab=trelm_fairseq.cli.vocab:cli_main",
            "trelm-align=trelm_fairseq.cli.align:cli_main",
            "trelm-map-embeddings=trelm_fairseq.cli.map_embeddings:cli_main",
            "trelm-prepare=trelm_fairseq.cli.prepare:cli_main",
            "trelm-probe=trelm_fairseq.cli.probe:cli_main",
            "trelm-fill-mask=trelm_fairseq.cli.fill_mask:cli_main",
            "trelm-export=trelm_fairseq.cli.export:cli_main",
        ],
    },
)
