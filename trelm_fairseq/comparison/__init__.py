"""The comparison (``make demo`` / ``trelm-demo``, the main job): transfer the embedded
English model to a target language with TreLM, then compare it with baselines downstream.

    trelm-demo --lang tr                    # CPU-sized budgets (~28 min on 2 idle cores)
    trelm-demo --lang tr --scale 20 --seeds 3 --max-tokens 16384   # a GPU-sized run

Steps (each resumable: a re-run skips what is finished):

 0. import the source model (trelm-import; default all-MiniLM-L6-v2) and prepare the data
    (trelm-prepare: LibreOffice help corpus, joint vocabulary, binarization, alignment,
    embedding mapping -> init checkpoint)
 1. TreLM: stage 1 -> 2a, 2b -> combine -> stage 4 (trelm-stages)
 2. baselines at equal compute (the same number of updates as all TreLM stages together,
    same architecture, same target data):
      scratch        random init, new vocabulary, MLM on the target language
      mapped_init    the init checkpoint (new vocabulary, mapped embeddings), no training
      mlm_continued  init checkpoint without TRILayer, MLM on the target language, no
                     adversarial term (TreLM minus TRILayer / CdLM / adversarial)
 2b. probes without fine-tuning (trelm_fairseq.probes) at the mapped init, after every
    TreLM stage and at each baseline's end: bitext retrieval P@1 on the held-out test pairs,
    the language-ID probe, target MLM
 3. downstream, for every model and seed: dependency parsing (turkish-treebanks, UAS/LAS,
    Tr only) and module classification of help paragraphs (target-language training, and
    zero-shot: English training, target-language test)
 4. report: <results>/results.md, results.json, mlm_loss.png (target MLM curves, retrieval
    P@1 per probed point); the table is printed.
 5. the TreLM model's final checkpoint exported for transformers into <results>/hf
    (trelm-export: BERT / RoBERTa classes, fast tokenizer, model card); the three lines of
    transformers code that load it and fill a mask in the target language are printed.

Modules: budgets (the models, Budgets), commands (running the package's tools), surgery
(checkpoint surgery), pretraining (stage plans), curves (target MLM loss, time to quality), alignment (step 2b),
finetune (downstream fine-tuning launchers), downstream (step 3), report, publish (step 5),
job (the steps in order).  The command line is trelm_fairseq/cli/demo.py.
"""
from .budgets import MODEL_TITLES, MODELS, PARSING_LANGS, Budgets, budgets_from_args  # noqa: F401
from .curves import target_curves, time_to_quality, valid_curve  # noqa: F401
from .finetune import finetune_classifier, finetune_parser, prune_checkpoints  # noqa: F401
from .job import run_job  # noqa: F401
from .pretraining import plan_for  # noqa: F401
from .publish import export_trelm, usage_block  # noqa: F401
from .report import mean_std, plot_curves, results_table, vocab_line, write_report  # noqa: F401
from .surgery import derived_init, model_shape_args, with_transfer_cfg  # noqa: F401
