"""2D SAM-family baselines (SAM ViT-B, MedSAM, MobileSAM, TinySAM, SAM-Med2D) applied slice by
slice, for the paper's Table 2 / Table 3 comparisons (issue 16, in progress).

``load_model_2d(name, checkpoint)`` returns a :class:`PromptableModel2D` with the authors'
published weights (``MODELS_2D`` lists the names and their sources). The architectures come from
Meta's ``segment-anything`` package (optional extra ``baselines2d``) plus the TinyViT encoder and
SAM-Med2D's adapters written here.
"""

from .contract import Preprocessing2D, PromptableModel2D
from .load import (
    CheckpointMismatchError2D,
    build_meta_2d,
    check_state_dict_2d,
    load_model_2d,
    read_checkpoint_2d,
)
from .registry import MODELS_2D, Spec2D, get_spec_2d

__all__ = [
    "MODELS_2D",
    "CheckpointMismatchError2D",
    "Preprocessing2D",
    "PromptableModel2D",
    "Spec2D",
    "build_meta_2d",
    "check_state_dict_2d",
    "get_spec_2d",
    "load_model_2d",
    "read_checkpoint_2d",
]
