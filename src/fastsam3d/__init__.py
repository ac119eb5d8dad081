"""fastsam3d: fast promptable 3D segmentation (SAM-Med3D / FastSAM3D family) for CT and MRI."""

from ._version import __version__ as __version__
from .build import build_model as build_model
from .build import load_model as load_model
from .checkpoint import read_checkpoint as read_checkpoint
from .checkpoint import save_native as save_native
from .config import ModelConfig as ModelConfig
from .config import SparseAttentionConfig as SparseAttentionConfig
from .config import SparsePattern as SparsePattern
from .data.frame import FrameSpec as FrameSpec
from .data.io import read_volume as read_volume
from .data.io import write_label_map as write_label_map
from .data.volume import Volume as Volume
from .interactive.session import Click as Click
from .interactive.session import MaskResult as MaskResult
from .interactive.session import Session as Session
from .modeling.sam3d import Sam3D as Sam3D
from .modeling.sam3d import upsample_logits as upsample_logits
from .registry import get_spec as get_spec
from .registry import list_models as list_models
