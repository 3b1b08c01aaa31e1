from .aligned_parallel_dataset import (  # noqa: F401
    AlignedParallelDataset,
    SubsetDataset,
    TreLMZipDataset,
    keep_by_length,
    load_indexed,
    validate_alignment,
)
from .tlm_pairs import PairLangIdsDataset, PairPositionsDataset  # noqa: F401
