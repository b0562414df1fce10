"""Typed configuration of the VoxCeleb-style DataModule (embedded as ``data:`` in the root config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mp_lightning.batch import SamplingMode

MODES = tuple(m.value for m in SamplingMode)
TASK_UNITS = ("clip", "identity")


@dataclass
class DataConfig:
    root: str = "data/synthetic"  # dataset root holding {train,test}/ and landmarks.json
    image_size: int = 256  # frames of another size are resized (area interpolation) to this square size
    mode: SamplingMode = SamplingMode.pairs  # pairs | windows | identity_tasks | cross_identity
    batch_size: int = 4  # per device (per DDP process)
    val_batch_size: Optional[int] = None  # validation/test batch size; None = batch_size
    num_workers: int = 2  # DataLoader worker processes per device; each opens its own video readers
    pin_memory: bool = False  # pin host memory (worth it only when training on a GPU)
    persistent_workers: bool = False  # keep workers (and their open readers) alive across epochs
    prefetch_factor: int = 2  # batches prefetched per worker (ignored when num_workers == 0)
    window_length: int = 3  # T: consecutive frames per sample in mode "windows"
    support_frames: int = 4  # S: support driving frames per identity task (mode "identity_tasks")
    query_frames: int = 4  # Q: query driving frames per identity task (mode "identity_tasks")
    # what one task is drawn from (mode "identity_tasks"): clip = source, support and query frames of one clip,
    # and a training epoch of one task per frame of every clip (the official meta-training); identity = frames
    # of any of the person's videos, and a training epoch of one task per identity
    task_unit: str = "identity"
    max_frame_distance: Optional[int] = None  # pairs: largest |source - driving| frame gap; None = any
    augment_flip: bool = True  # training only: horizontal flip with p=0.5, landmarks re-indexed
    samples_per_epoch: Optional[int] = None  # training samples per epoch; None = one per clip (one per identity for identity_tasks)
    val_samples_per_clip: int = 1  # fixed validation/test samples drawn from each clip (each identity for identity_tasks)
    val_max_samples: Optional[int] = None  # cap on validation/test samples (the first ones, deterministic)
    eval_seed: int = 0  # seed of the deterministic validation/test samples
    train_split: str = "train"  # sub-folder of root used for training
    # validation never looks at the test identities: with val_split == train_split (the default) it holds
    # out `val_identities` training identities, chosen by a hash of their names, and trains on the rest;
    # another value names a folder of its own (e.g. "val")
    val_split: str = "train"
    val_identities: int = 2  # identities carved out of the training split for validation (>= 2 for cross-identity)
    val_cross_identity: bool = True  # a second validation set in cross-identity mode: val/cross/<metric>
    test_split: str = "test"  # sub-folder used for test / evaluation
    strict: bool = False  # any bad clip found by the setup scan raises DataError instead of being left out
    use_landmarks: bool = True  # read <clip>.landmarks.npy (a clip without one is bad); False = no landmark keys
    semantics: bool = False  # read <clip>.semantics.npy: adds source_semantics / driving_semantics (B, 73, 2r+1) windows
    semantic_radius: int = 13  # r: frames each side of the centre frame in a descriptor window (PIRender: 13)
    landmark_subset: Optional[str] = None  # a subset declared in landmarks.json (e.g. sparse68 for the sparse ablation)
    landmark_margin: float = 0.25  # landmarks may lie this far outside [0, 1] (faces at the frame edge)
    reader_cache_size: int = 16  # open video readers kept per process (LRU; ~6 MB each at 256 px)
    decode_threads: int = 0  # decord threads per reader; 0 = FFmpeg auto (measured ~2x faster than 1 for 2-frame reads here)
    max_decode_retries: int = 10  # sample-time decode failures tolerated in a row before raising
