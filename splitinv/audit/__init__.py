"""The identity membership audit (Webster et al. 2021): does a generator reproduce its training images?

- :mod:`splitinv.audit.membership`: image sets (folders, tensors, a generator's samples), the threshold
  calibrated on reference images at a chosen false-positive rate, the Wilson interval, the audit and its
  files (``audit.json``, ``samples.csv``, ``audit.png``), the W&B run.
- :mod:`splitinv.audit.embed`: the embedders (``facenet``, ``victim``, ``pixels``).
- :mod:`splitinv.audit.facenet`: FaceNet's Inception-ResNet-v1, loading facenet-pytorch's weight files.
- :mod:`splitinv.audit.faces`: face detection and alignment before embedding (OpenCV's Haar cascades).

It sits beside the run: it samples generators (:mod:`splitinv.gans`) and embeds with victims; nothing below
imports it. The command is ``splitinv audit``.
"""

from splitinv.audit.embed import (
    EMBEDDERS,
    Embedder,
    FaceNetEmbedder,
    PixelEmbedder,
    VictimEmbedder,
    build_embedder,
)
from splitinv.audit.facenet import InceptionResnetV1, fixed_image_standardization, load_facenet
from splitinv.audit.membership import (
    AUDIT_FORMAT,
    FILES,
    AuditReport,
    Calibration,
    FolderImages,
    GeneratedImages,
    ImageSet,
    TensorImages,
    as_image_set,
    audit,
    calibrate_threshold,
    check_fpr,
    wandb_run,
    wilson_interval,
)

__all__ = [
    "AUDIT_FORMAT",
    "EMBEDDERS",
    "FILES",
    "AuditReport",
    "Calibration",
    "Embedder",
    "FaceNetEmbedder",
    "FolderImages",
    "GeneratedImages",
    "ImageSet",
    "InceptionResnetV1",
    "PixelEmbedder",
    "TensorImages",
    "VictimEmbedder",
    "as_image_set",
    "audit",
    "build_embedder",
    "calibrate_threshold",
    "check_fpr",
    "fixed_image_standardization",
    "load_facenet",
    "wandb_run",
    "wilson_interval",
]
