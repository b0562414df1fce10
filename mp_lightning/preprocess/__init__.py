"""Raw videos and photos -> face crops, landmarks and identity embeddings in our data layout.

- :func:`preprocess_dataset` / `mp-lightning preprocess RAW OUT`: a folder of raw videos -> dataset.
- :func:`prepare_source_photo`, :func:`prepare_driving_video`: on-the-fly inputs for `animate`.
- :mod:`.landmark_sources`: mediapipe FaceMesh (478/468), its 68-point subset, precomputed files.
- :mod:`.tracking`: MTCNN detection, IoU tracks, crop boxes.
"""
from mp_lightning.preprocess.api import prepare_driving_video, prepare_source_photo
from mp_lightning.preprocess.pipeline import Settings, preprocess_dataset

__all__ = ["Settings", "preprocess_dataset", "prepare_driving_video", "prepare_source_photo"]
