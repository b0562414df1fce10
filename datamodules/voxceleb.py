"""`VoxCelebDataModule`: VoxCeleb-style talking-head clips in four sampling modes.

Batch keys (images float32 ``(.., 3, H, W)`` in [0, 1]; landmarks float32 ``(.., K, 2)`` in
[0, 1], x right, y down, ``x = (column + 0.5) / W``; the landmark keys are absent when
``use_landmarks`` is false):

``pairs`` and ``cross_identity``
    source, driving (B, 3, H, W); source_landmarks, driving_landmarks (B, K, 2);
    source_index, driving_index (B,) long frame indices; clip, identity (list[str], the
    source's); cross_identity adds driving_clip, driving_identity (list[str]).
``windows``
    frames (B, T, 3, H, W); frames_landmarks (B, T, K, 2); frame_indices (B, T) long; clip,
    identity; and source = frames[:, 0], driving = frames[:, -1] with their landmarks and
    indices, as in ``pairs``.
``identity_tasks`` (one item = one person)
    source (B, 3, H, W), source_landmarks (B, K, 2), source_index (B,);
    support_driving (B, S, 3, H, W), support_driving_landmarks (B, S, K, 2),
    support_driving_index (B, S); query_driving / query_driving_landmarks / query_driving_index
    likewise with Q; identity, clip (the source's). `mp_lightning.batch.task_pairs` turns one task into a
    ``pairs`` batch.

Every mode adds ``source_identity`` (B, D) when every clip of the split has a
``<clip>.identity.npy``, and then ``source_identity_kind`` (list[str]) when ``ROOT/identity.json``
declares which embedding the files hold (e.g. "facenet-vggface2"; see
:func:`datamodules.clips.load_identity_description`).

With ``data.semantics`` every mode adds motion-descriptor windows (float32 ``(73, 2r+1)`` per frame,
see :mod:`datamodules.semantics`): source_semantics and driving_semantics (B, 73, 2r+1) (identity_tasks:
source_semantics and {support,query}_driving_semantics (B, S|Q, 73, 2r+1)), and semantics_kind
(list[str]) when ``ROOT/semantics.json`` declares the extractor.

A stage's per-sample transform (:meth:`VoxCelebDataModule.set_sample_transform`) adds its own keys
in the workers, e.g. MetaPortrait's source_line, driving_line, eye_mask, mouth_mask and
gaze_points (for ``identity_tasks``: source_line and ``{support,query}_driving_line`` etc.).

Training samples are random (a fresh stream per worker, per rank and per epoch); validation and
test sample ``i`` is drawn from a generator seeded by ``(eval_seed, i)``, so it is the same every
epoch, in every worker and on every rank.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import lightning as L

from datamodules.clips import (
    ClipInfo,
    FrameReader,
    SplitScan,
    load_identity_description,
    load_landmark_spec,
    report_dict,
    scan_split,
    subset_landmark_spec,
    write_report,
)
from datamodules.config import MODES, TASK_UNITS, DataConfig
from datamodules.semantics import attach_semantics, load_semantics_description, semantic_window
from mp_lightning.errors import DataError


def min_frames_for(config: DataConfig) -> int:
    """Frames a clip needs so that one sample of ``config.mode`` can be drawn from it."""
    if config.mode == "windows":
        return config.window_length
    return 2


class ClipSampleDataset(Dataset):
    """Samples of one split in one mode; see the module docstring for the item keys."""

    def __init__(
        self,
        clips: list[ClipInfo],
        config: DataConfig,
        train: bool,
        flip_permutation: list[int] | None = None,
        failure_log: str | None = None,
        split: str = "",
    ):
        self.clips = clips
        self.config = config
        self.train = train
        self.mode = config.mode
        self.flip_permutation = None if flip_permutation is None else np.asarray(flip_permutation)
        self.failure_log = failure_log
        self.landmark_subset: np.ndarray | None = None  # point ids kept (data.landmark_subset), None = all
        # per-sample inputs the model derives from the data (a stage's `sample_transform`), run here so
        # that they are made in the DataLoader workers; None = items as read
        self.sample_transform = None
        self.reader = FrameReader(config.reader_cache_size, config.decode_threads)
        self.rank = 0  # set by the DataModule so DDP ranks draw different training streams
        self.epoch_seed = 0  # bumped by the DataModule each epoch (persistent workers keep their stream)
        self.identity_description: dict | None = None  # what the .identity.npy files hold (set by the DataModule)
        self.semantics_description: dict | None = None  # ROOT/semantics.json (set by the DataModule)
        self.with_identity = bool(clips) and all(c.identity_path for c in clips)
        self._identities: dict[str, list[int]] = {}
        for i, c in enumerate(clips):
            self._identities.setdefault(c.identity, []).append(i)
        self.identity_names = sorted(self._identities)
        if self.mode == "cross_identity" and len(self.identity_names) < 2:
            raise DataError(
                f"mode 'cross_identity' needs clips of at least 2 identities in split '{split}', found"
                f" {len(self.identity_names)} ({self.identity_names})"
            )
        self.failures: dict[str, str] = {}  # clip name -> reason, for this process
        self._rng: np.random.Generator | None = None
        self._rng_key = None
        self._flip_now = False

    # ------------------------------------------------------------------ lengths and randomness
    def _units(self) -> int:
        if self.mode == "identity_tasks" and self.config.task_unit == "identity":
            return len(self.identity_names)
        return len(self.clips)

    def __len__(self) -> int:
        if self.train:
            if self.mode == "identity_tasks" and self.config.task_unit == "clip" and not self.config.samples_per_epoch:
                # the official epoch: one task per frame of every clip
                return sum(c.num_frames for c in self.clips)
            return self.config.samples_per_epoch or self._units()
        n = self._units() * self.config.val_samples_per_clip
        return min(n, self.config.val_max_samples) if self.config.val_max_samples else n

    def _train_rng(self) -> np.random.Generator:
        # torch seeds every DataLoader worker with base_seed + worker_id, base_seed fresh each
        # epoch; in the main process (num_workers=0) the generator simply keeps running.
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.seed if info is not None else torch.initial_seed(), self.rank, self.epoch_seed)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng(np.random.SeedSequence([k % (2**63) for k in key[1:]]))
            self._rng_key = key
        return self._rng

    def _sample_rng(self, index: int) -> np.random.Generator:
        if self.train:
            return self._train_rng()
        return np.random.default_rng(np.random.SeedSequence([self.config.eval_seed, index]))

    # ------------------------------------------------------------------ reading
    def _load(self, clip: ClipInfo, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        frames = self.reader.read(clip, indices)
        size = self.config.image_size
        if frames.shape[1] != size or frames.shape[2] != size:
            import cv2

            interp = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
            frames = np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])
        if self._flip_now:
            frames = frames[:, :, ::-1]
        # numpy, not torch: conversions here must not depend on torch's intra-op thread pool,
        # which on a busy machine makes these small ops 30-70x slower in the main process
        images = np.empty((frames.shape[0], 3, size, size), np.float32)
        np.multiply(frames.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=images, dtype=np.float32)
        lms = None
        if clip.landmarks_path is not None:
            arr = np.load(clip.landmarks_path, mmap_mode="r")
            lms = np.array(arr[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
            if self.landmark_subset is not None:
                lms = lms[:, self.landmark_subset]
            if self._flip_now:
                lms[..., 0] = 1.0 - lms[..., 0]
                if self.flip_permutation is not None:
                    lms = lms[:, self.flip_permutation]
            lms = torch.from_numpy(np.ascontiguousarray(lms))
        return torch.from_numpy(images), lms

    def _record_failure(self, clip: ClipInfo, err: Exception) -> None:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        self.failures[clip.name] = reason
        if clip.kind == "video":
            self.reader.drop(clip.path)
        warnings.warn(f"skipping clip {clip.name}: it failed to decode ({reason})", RuntimeWarning, stacklevel=3)
        if self.failure_log:
            line = json.dumps({"clip": clip.name, "reason": reason, "pid": os.getpid(), "time": time.time()})
            with open(self.failure_log, "a") as fh:  # one short append per failure: safe across workers
                fh.write(line + "\n")

    # ------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> dict:
        rng = self._sample_rng(index)
        unit = index % self._units() if self.train else index // self.config.val_samples_per_clip
        # a flip mirrors every image of the item (x -> 1 - x) and swaps left/right landmark ids
        self._flip_now = bool(self.train and self.config.augment_flip and rng.random() < 0.5)
        for _attempt in range(self.config.max_decode_retries + 1):
            try:
                item = self._make_item(unit, rng)
            except _ClipFailed as failed:
                self._record_failure(failed.clip, failed.error)
                unit = int(rng.integers(self._units()))
                continue
            return item if self.sample_transform is None else self.sample_transform(item)
        raise DataError(
            f"{self.config.max_decode_retries + 1} clips in a row failed to decode (last: {sorted(self.failures)[-1:]}); "
            "the data root looks broken"
        )

    def _usable(self, clip_index: int) -> bool:
        return self.clips[clip_index].name not in self.failures

    def _read(self, clip: ClipInfo, indices):
        if clip.name in self.failures:
            raise _ClipFailed(clip, RuntimeError(self.failures[clip.name]))
        try:
            return self._load(clip, indices)
        except Exception as err:  # noqa: BLE001 - a bad file must not end a long run
            raise _ClipFailed(clip, err) from err

    def _put_identity(self, item: dict, clip: ClipInfo) -> None:
        vector = np.load(clip.identity_path).astype(np.float32).reshape(-1)
        desc = self.identity_description
        if desc is not None:
            if vector.shape[0] != desc["dim"]:
                raise DataError(
                    f"{clip.identity_path} holds a {vector.shape[0]}-d embedding but the data root declares "
                    f"{desc['dim']}-d '{desc['kind']}' embeddings ({desc.get('declared_by', 'identity.json')}): "
                    f"rewrite the file or fix the declaration"
                )
            item["source_identity_kind"] = desc["kind"]
        item["source_identity"] = torch.from_numpy(vector)

    def _put(self, item: dict, prefix: str, images, lms, indices, clip: ClipInfo | None = None) -> None:
        item[prefix] = images
        if lms is not None:
            item[f"{prefix}_landmarks"] = lms
        item[f"{prefix}_index"] = torch.as_tensor(indices, dtype=torch.long)
        if self.config.semantics and clip is not None:
            arr = np.load(clip.semantics_path, mmap_mode="r")
            r = self.config.semantic_radius
            windows = [semantic_window(arr, i, r) for i in np.atleast_1d(indices)]
            item[f"{prefix}_semantics"] = torch.from_numpy(windows[0] if np.ndim(indices) == 0 else np.stack(windows))
            if self.semantics_description is not None:
                item["semantics_kind"] = self.semantics_description["kind"]

    def _pick_clip(self, unit: int, rng: np.random.Generator) -> int:
        if self._usable(unit):
            return unit
        return int(rng.integers(len(self.clips)))  # fails again (and is retried) if also bad

    def _make_item(self, unit: int, rng: np.random.Generator) -> dict:
        cfg = self.config
        if self.mode == "identity_tasks":
            return self._task_item(unit, rng)
        clip = self.clips[self._pick_clip(unit, rng)]
        n = clip.num_frames
        item: dict = {"clip": clip.name, "identity": clip.identity}
        if self.mode == "windows":
            t = cfg.window_length
            start = int(rng.integers(0, n - t + 1))
            idx = list(range(start, start + t))
            images, lms = self._read(clip, idx)
            item["frames"] = images
            item["frame_indices"] = torch.as_tensor(idx, dtype=torch.long)
            self._put(item, "source", images[0], None if lms is None else lms[0], idx[0], clip)
            self._put(item, "driving", images[-1], None if lms is None else lms[-1], idx[-1], clip)
            if lms is not None:
                item["frames_landmarks"] = lms
        elif self.mode == "pairs":
            if cfg.max_frame_distance is not None and cfg.max_frame_distance < n - 1:
                d = max(1, cfg.max_frame_distance)
                s = int(rng.integers(n))
                lo, hi = max(0, s - d), min(n - 1, s + d)
                t = int(rng.integers(lo, hi))  # hi - lo >= 1 since n >= 2
                t = t + 1 if t >= s else t
                idx = [s, t]
            else:
                idx = [int(i) for i in rng.choice(n, 2, replace=False)]
            images, lms = self._read(clip, idx)
            self._put(item, "source", images[0], None if lms is None else lms[0], idx[0], clip)
            self._put(item, "driving", images[1], None if lms is None else lms[1], idx[1], clip)
        else:  # cross_identity
            others = [name for name in self.identity_names if name != clip.identity]
            other = others[int(rng.integers(len(others)))]
            pool = self._identities[other]
            dclip = self.clips[pool[int(rng.integers(len(pool)))]]
            s, t = int(rng.integers(n)), int(rng.integers(dclip.num_frames))
            simg, slm = self._read(clip, [s])
            dimg, dlm = self._read(dclip, [0, t])
            self._put(item, "source", simg[0], None if slm is None else slm[0], s, clip)
            self._put(item, "driving", dimg[1], None if dlm is None else dlm[1], t, dclip)
            # the driving clip's first frame: the reference of relative motion (FOMM) and retargeting
            item["driving_initial"] = dimg[0]
            if dlm is not None:
                item["driving_initial_landmarks"] = dlm[0]
            item["driving_clip"] = dclip.name
            item["driving_identity"] = dclip.identity
        if self.with_identity:
            self._put_identity(item, clip)
        return item

    def _task_item(self, unit: int, rng: np.random.Generator) -> dict:
        cfg = self.config
        if cfg.task_unit == "clip":
            pool = [self._pick_clip(unit % len(self.clips), rng)]
        else:
            name = self.identity_names[unit % len(self.identity_names)]
            pool = [i for i in self._identities[name] if self._usable(i)] or self._identities[name]
        source_clip = pool[int(rng.integers(len(pool)))]
        source_frame = int(rng.integers(self.clips[source_clip].num_frames))
        need = cfg.support_frames + cfg.query_frames
        capacity = sum(self.clips[i].num_frames for i in pool) - 1
        chosen: list[tuple[int, int]] = []
        taken = {(source_clip, source_frame)}
        tries = 0
        while len(chosen) < need:
            c = pool[int(rng.integers(len(pool)))]
            f = int(rng.integers(self.clips[c].num_frames))
            tries += 1
            # without replacement while the identity has enough frames
            if (c, f) in taken and capacity >= need and tries < 50 * need:
                continue
            taken.add((c, f))
            chosen.append((c, f))
        # one decode call per clip
        by_clip: dict[int, list[int]] = {source_clip: [source_frame]}
        for c, f in chosen:
            by_clip.setdefault(c, []).append(f)
        loaded = {c: self._read(self.clips[c], frames) for c, frames in by_clip.items()}
        cursor = {c: 0 for c in by_clip}

        def take(c):
            images, lms = loaded[c]
            k = cursor[c]
            cursor[c] += 1
            return images[k], None if lms is None else lms[k]

        src_img, src_lm = take(source_clip)
        clip = self.clips[source_clip]
        item: dict = {"clip": clip.name, "identity": clip.identity}
        self._put(item, "source", src_img, src_lm, source_frame, clip)
        for prefix, part in (("support_driving", chosen[: cfg.support_frames]), ("query_driving", chosen[cfg.support_frames :])):
            got = [take(c) for c, _ in part]
            lm = None if src_lm is None else torch.stack([g[1] for g in got])
            self._put(item, prefix, torch.stack([g[0] for g in got]), lm, [f for _, f in part])
            if cfg.semantics:
                r = cfg.semantic_radius
                item[f"{prefix}_semantics"] = torch.from_numpy(np.stack(
                    [semantic_window(np.load(self.clips[c].semantics_path, mmap_mode="r"), f, r) for c, f in part]))
        if self.with_identity:
            self._put_identity(item, clip)
        return item


class _ClipFailed(Exception):
    def __init__(self, clip: ClipInfo, error: Exception):
        super().__init__(clip.name)
        self.clip = clip
        self.error = error


def _as_config(config) -> DataConfig:
    if isinstance(config, DataConfig):
        return config
    try:  # an OmegaConf DictConfig (structured or not)
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            obj = OmegaConf.to_object(config)
            if isinstance(obj, DataConfig):
                return obj
            config = obj
    except ImportError:  # pragma: no cover
        pass
    if isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(DataConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise DataError(f"unknown data config key(s) {unknown}; valid keys: {sorted(known)}")
        return DataConfig(**config)
    raise TypeError(f"expected a DataConfig, got {type(config).__name__}")


class VoxCelebDataModule(L.LightningDataModule):
    """VoxCeleb-style clips (mp4 read with decord, or PNG frame folders) with landmarks.

    ``setup`` scans the needed splits (every clip opened and checked cheaply), leaves bad clips
    out with a reason, and writes ``data_report.json`` into ``report_dir`` when given.
    """

    def __init__(self, config: DataConfig | Mapping, report_dir: str | os.PathLike | None = None):
        super().__init__()
        self.config = _as_config(config)
        cfg = self.config
        if cfg.mode not in MODES:
            raise DataError(f"data.mode must be one of {list(MODES)}, got {cfg.mode!r}")
        if cfg.mode == "windows" and cfg.window_length < 1:
            raise DataError("data.window_length must be >= 1")
        if cfg.mode == "identity_tasks" and (cfg.support_frames < 1 or cfg.query_frames < 1):
            raise DataError("data.support_frames and data.query_frames must be >= 1")
        if cfg.semantics and cfg.augment_flip:
            raise DataError("data.augment_flip mirrors the images but not the motion descriptors of data.semantics: "
                            "set data.augment_flip=false")
        if cfg.task_unit not in TASK_UNITS:
            raise DataError(f"data.task_unit must be one of {list(TASK_UNITS)}, got {cfg.task_unit!r}")
        if cfg.batch_size < 1 or cfg.image_size < 8 or cfg.val_samples_per_clip < 1:
            raise DataError("data.batch_size, data.image_size (>= 8) and data.val_samples_per_clip must be positive")
        self.report_dir = None if report_dir is None else str(report_dir)
        self._full_spec = load_landmark_spec(cfg.root) if Path(cfg.root).is_dir() else None
        self._subset: list[int] | None = None  # point ids kept by data.landmark_subset
        self._spec = self._full_spec
        self._identity_description = load_identity_description(cfg.root) if Path(cfg.root).is_dir() else None
        self._semantics_description = (load_semantics_description(cfg.root)
                                       if cfg.semantics and Path(cfg.root).is_dir() else None)
        if cfg.landmark_subset:
            self._subset, self._spec = subset_landmark_spec(self._full_spec, cfg.landmark_subset, cfg.root)
        self.scans: dict[str, SplitScan] = {}
        self.sample_transform = None  # see `set_sample_transform`
        self.train_dataset: ClipSampleDataset | None = None
        self.val_dataset: ClipSampleDataset | None = None
        self.val_cross_dataset: ClipSampleDataset | None = None
        self.test_dataset: ClipSampleDataset | None = None

    # ------------------------------------------------------------------ metadata
    @property
    def landmark_spec_dict(self) -> dict | None:
        """The parsed ``ROOT/landmarks.json`` (or None): the lead builds the line drawer from it."""
        return self._spec

    @property
    def num_points(self) -> int | None:
        if self._spec and "num_points" in self._spec:
            return int(self._spec["num_points"])
        for scan in self.scans.values():
            for clip in scan.clips:
                if clip.landmarks_path:
                    return int(np.load(clip.landmarks_path, mmap_mode="r").shape[1])
        return None

    @property
    def report_path(self) -> Path | None:
        return None if self.report_dir is None else Path(self.report_dir) / "data_report.json"

    def set_sample_transform(self, transform) -> None:
        """Run ``transform(item) -> item`` on every sample of every split, in the DataLoader workers.

        The model's per-sample inputs (a stage's ``sample_transform()``, e.g. MetaPortrait's landmark
        lines and masks) are made there, as the official loaders do, instead of on the main process
        in the training step. ``transform`` must be picklable; None switches it off.
        """
        self.sample_transform = transform
        for dataset in (self.train_dataset, self.val_dataset, self.val_cross_dataset, self.test_dataset):
            if dataset is not None:
                dataset.sample_transform = transform

    # ------------------------------------------------------------------ setup
    def _scan(self, split: str) -> SplitScan:
        if split in self.scans:
            return self.scans[split]
        cfg = self.config
        num_points = None  # the files hold the full set, whatever subset is used
        if self._full_spec and "num_points" in self._full_spec:
            num_points = int(self._full_spec["num_points"])
        elif self._full_spec and self._full_spec.get("preset") == "official669":
            num_points = 669
        scan = scan_split(cfg.root, split, min_frames_for(cfg), cfg.use_landmarks, num_points, cfg.landmark_margin)
        if cfg.semantics:
            attach_semantics(scan)
        self.scans[split] = scan
        self._write_report()
        if scan.bad or scan.empty_identity_folders:
            listed = "; ".join(f"{b['clip']}: {b['reason']}" for b in scan.bad[:10])
            more = f" (and {len(scan.bad) - 10} more)" if len(scan.bad) > 10 else ""
            empties = f"; empty identity folders: {scan.empty_identity_folders}" if scan.empty_identity_folders else ""
            where = f" (see {self.report_path})" if self.report_path else ""
            message = f"{len(scan.bad)} bad clip(s) in {scan.folder}{where}: {listed}{more}{empties}"
            if not scan.bad:
                message = f"empty identity folder(s) in {scan.folder}{where}: {scan.empty_identity_folders}"
            if cfg.strict:
                raise DataError(f"data.strict is set and {message}")
            warnings.warn(f"left out {message}", RuntimeWarning, stacklevel=2)
        if not scan.clips:
            raise DataError(
                f"no usable clip in data root {cfg.root} split '{split}' ({scan.clips_found} found, {len(scan.bad)} bad"
                + (f"; first: {scan.bad[0]['clip']}: {scan.bad[0]['reason']}" if scan.bad else "")
                + ")"
            )
        return scan

    def _write_report(self) -> None:
        if self.report_dir is None:
            return
        report = report_dict(self.config.root, self.config.mode, min_frames_for(self.config), self.scans)
        report["sample_time_failures_log"] = str(Path(self.report_dir) / "data_sample_failures.jsonl")
        if self.val_dataset is not None:
            report["validation"] = {"split": self.config.val_split, "identities": self.validation_identities,
                                    "sets": list(self.val_set_names)}
        write_report(self.report_dir, report)

    @property
    def validation_identities(self) -> list[str]:
        """The identities validation samples come from; never the test split's (unless configured so)."""
        cfg = self.config
        if cfg.val_split != cfg.train_split:
            return sorted({c.identity for c in self._scan(cfg.val_split).clips})
        names = sorted({c.identity for c in self._scan(cfg.train_split).clips})
        if not 1 <= cfg.val_identities < len(names):
            raise DataError(
                f"data.val_identities={cfg.val_identities} must be >= 1 and leave training identities: split"
                f" '{cfg.train_split}' of {cfg.root} has {len(names)} identities"
            )
        # a hash of the name, not the sorted order: adding identities to a data root keeps the old choice
        ranked = sorted(names, key=lambda name: hashlib.sha1(f"val:{name}".encode()).hexdigest())
        return sorted(ranked[: cfg.val_identities])

    def _clips(self, role: str) -> list[ClipInfo]:
        cfg = self.config
        split = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}[role]
        clips = self._scan(split).clips
        if role == "test" or cfg.val_split != cfg.train_split:
            return clips
        held_out = set(self.validation_identities)
        return [c for c in clips if (c.identity in held_out) == (role == "val")]

    def _dataset(self, role: str, train: bool, mode: str | None = None) -> ClipSampleDataset:
        clips = self._clips(role)
        split = role
        perm = (self._spec or {}).get("flip_permutation")
        if train and self.config.augment_flip and self.config.use_landmarks and perm is None:
            raise DataError(
                f"data.augment_flip needs a flip_permutation in {Path(self.config.root) / 'landmarks.json'} to re-index"
                " left/right landmarks; add one or set data.augment_flip=false"
            )
        log = None if self.report_dir is None else str(Path(self.report_dir) / "data_sample_failures.jsonl")
        config = self.config if mode is None else dataclasses.replace(self.config, mode=mode)
        dataset = ClipSampleDataset(clips, config, train, perm, log, split)
        dataset.landmark_subset = None if self._subset is None else np.asarray(self._subset)
        dataset.sample_transform = self.sample_transform
        dataset.identity_description = self._identity_description
        dataset.semantics_description = self._semantics_description
        return dataset

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            if cfg.val_split == cfg.test_split:
                warnings.warn(f"data.val_split={cfg.val_split!r} is the test split: checkpoint selection and sweeps"
                              " will tune on the test identities", RuntimeWarning, stacklevel=2)
            self.val_dataset = self._dataset("val", train=False)
            self.val_cross_dataset = None
            if self.val_set_names == ("self", "cross"):
                self.val_cross_dataset = self._dataset("val", train=False, mode="cross_identity")
            self._write_report()
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._dataset("test", train=False)

    @property
    def val_set_names(self) -> tuple[str, ...]:
        """The validation dataloaders in order: self-reenactment, then cross-identity where it applies."""
        cfg = self.config
        # windows (super-resolution) do not animate a source, so there is nothing cross-identity to measure
        animates = cfg.mode in ("pairs", "identity_tasks", "cross_identity")
        if cfg.val_cross_identity and animates and cfg.mode != "cross_identity" and len(self.validation_identities) >= 2:
            return ("self", "cross")
        return ("self",)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: ClipSampleDataset, batch_size: int, shuffle: bool) -> DataLoader:
        cfg = self.config
        workers = cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=cfg.pin_memory,
            persistent_workers=cfg.persistent_workers and workers > 0,
            prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
            drop_last=False,
        )

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_rank) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        """Shuffled; under DDP Lightning wraps it in a DistributedSampler so ranks get disjoint indices."""
        if self.train_dataset is None:
            self.setup("fit")
        self.train_dataset.rank = self._rank()
        trainer = getattr(self, "trainer", None)
        self.train_dataset.epoch_seed = int(trainer.current_epoch) if trainer is not None else 0
        return self._loader(self.train_dataset, self.config.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per name in `val_set_names`: self-reenactment first, then cross-identity."""
        if self.val_dataset is None:
            self.setup("validate")
        batch_size = self.config.val_batch_size or self.config.batch_size
        datasets = [self.val_dataset] + ([self.val_cross_dataset] if self.val_cross_dataset is not None else [])
        return [self._loader(dataset, batch_size, shuffle=False) for dataset in datasets]

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset, self.config.val_batch_size or self.config.batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def media_clip(self, num_frames: int = 16, split: str = "val") -> dict | None:
        """The first validation clip as a driving sequence for media logging: its frame 0 is the source.

        Returns source (3, H, W), driving (T, 3, H, W) in [0, 1] and, with landmarks, source_landmarks
        (K, 2) and driving_landmarks (T, K, 2); None when there is no clip. Always the same clip, so
        the logged videos of successive epochs are comparable.
        """
        dataset = self.val_dataset if split == "val" else self.test_dataset
        if dataset is None:
            self.setup("validate" if split == "val" else "test")
            dataset = self.val_dataset if split == "val" else self.test_dataset
        if not dataset.clips:
            return None
        clip = dataset.clips[0]
        indices = list(range(min(num_frames, clip.num_frames)))
        images, lms = dataset._load(clip, indices)
        sample = {"source": images[0], "driving": images, "clip": clip.name}
        if lms is not None:
            sample["source_landmarks"], sample["driving_landmarks"] = lms[0], lms
        if self.config.semantics:  # the clip's per-frame motion descriptors (T, 73)
            sem = np.load(clip.semantics_path, mmap_mode="r")[: len(indices)]
            sample["driving_semantics"] = torch.from_numpy(np.asarray(sem, dtype=np.float32))
        return sample
