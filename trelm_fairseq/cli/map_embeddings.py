"""trelm-map-embeddings: initialise the new vocabulary's embeddings and write the stage-1
start checkpoint (the steps are in trelm_fairseq.preprocess.embedding_mapping).

    trelm-map-embeddings --source-model DATA/source --data DATA --text tok.en tok.tr
    trelm-map-embeddings --source-model DATA/source --data DATA --no-mapping     # ablation
"""
from typing import List, Optional

from ..errors import cli_errors
from ..preprocess.mapping_options import build_parser, main  # noqa: F401  (build_parser: --help, tests)


@cli_errors
def cli_main(argv: Optional[List[str]] = None) -> None:
    main(argv)  # the progress log is the output; console scripts exit with the return value


if __name__ == "__main__":  # pragma: no cover
    cli_main()
