"""AI pipeline: segmentation, joint localisation, grading, Grad-CAM, model bundles (torch/MONAI, imported lazily). No Qt."""
