"""Multi-view diffusion (MVDream: text -> 4 views, ImageDream: image -> 4 views) on diffusers."""

from core.mvdiffusion.pipeline import (
    MV_TO_LGM,
    MVDreamPipeline,
    classifier_free_guidance,
    mvdream_cameras,
    resolve_pipeline_folder,
    to_lgm_order,
)
from core.mvdiffusion.unet import MultiViewUNetModel

__all__ = [
    "MV_TO_LGM",
    "MVDreamPipeline",
    "MultiViewUNetModel",
    "classifier_free_guidance",
    "mvdream_cameras",
    "resolve_pipeline_folder",
    "to_lgm_order",
]
