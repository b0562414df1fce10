"""Motion descriptors produced elsewhere -> our `<clip>.semantics.npy` (kind deep3dfacerecon).

* Deep3DFaceRecon `.mat` files: `coeff` (N, 257) = identity 80, expression 64, texture 80, angles 3,
  SH lighting 27, translation 3 (or those parts as separate keys `id, exp, tex, angle, gamma, trans`), and
  `transform_params` (N, 5) = (w0, h0, ratio, t0, t1) of the alignment crop (issue 7 of RenYurui/PIRender);
  one file per clip (rows = frames) or per frame (`<clip>/<frame>.mat`, sorted by name).
* PIRender's own lmdb dataset (`scripts/prepare_vox_lmdb.py`, BASELINES.md 2.7): `<path>/256` holds
  `<clip>-length`, `<clip>-%07d` JPEG frames and `<clip>-coeff_3dmm` (float32 N x 260 = 257 coefficients + 3
  crop parameters); `<path>/{train,test}_list.txt` name the clips. Imported to our layout:
  `OUT/{train,test}/<identity>/<video>/<clip>.mp4` (identity and video from FOMM-style names
  `id#video#start#end`) with `<clip>.semantics.npy`; no landmarks (train with `data.use_landmarks=false`).

The 73 channels keep the official order: expression [80:144], angles [224:227], translation [254:257], crop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from mp_lightning.errors import DataError

EXPRESSION, ANGLES, TRANSLATION = slice(80, 144), slice(224, 227), slice(254, 257)
PARTS = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans", 3))


def deep3d_to_semantics(coeff: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """(N, 257) coefficients and (N, 3) crop parameters (ratio, t0, t1) -> float32 (N, 73)."""
    coeff, crop = np.atleast_2d(coeff), np.atleast_2d(crop)
    if coeff.shape[1] != 257 or crop.shape[1] != 3 or len(coeff) != len(crop):
        raise DataError(f"expected (N, 257) coefficients and (N, 3) crop parameters, got {coeff.shape} and {crop.shape}")
    return np.concatenate([coeff[:, EXPRESSION], coeff[:, ANGLES], coeff[:, TRANSLATION], crop], 1).astype(np.float32)


def read_deep3d_mat(path: str | Path) -> np.ndarray:
    """One Deep3DFaceRecon .mat (or a folder of per-frame .mat files) -> (N, 73)."""
    from scipy.io import loadmat

    path = Path(path)
    files = sorted(path.glob("*.mat")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .mat files")
    rows = []
    for f in files:
        try:
            m = loadmat(str(f))
        except Exception as err:  # noqa: BLE001
            raise DataError(f"{f}: not a readable .mat file ({err})") from err
        if "coeff" in m:
            coeff = np.atleast_2d(m["coeff"])
        elif all(k in m for k, _ in PARTS):
            coeff = np.concatenate([np.atleast_2d(m[k]).reshape(-1, n) for k, n in PARTS], 1)
        else:
            raise DataError(f"{f}: no 'coeff' (N, 257) nor the keys {[k for k, _ in PARTS]}")
        if "transform_params" not in m:
            raise DataError(f"{f}: no 'transform_params' (N, 5): the crop parameters come from it")
        tp = np.atleast_2d(m["transform_params"]).reshape(len(coeff), -1)
        if tp.shape[1] != 5:
            raise DataError(f"{f}: transform_params has {tp.shape[1]} values per frame, expected 5 (w0, h0, ratio, t0, t1)")
        rows.append(deep3d_to_semantics(coeff, tp[:, 2:5]))
    return np.concatenate(rows)


def import_deep3d_mats(mat_root: str | Path, data_root: str | Path, splits=("train", "test")) -> dict:
    """For every clip `ROOT/<split>/<rel>.mp4`, read `MAT_ROOT/<split>/<rel>.mat` (or the folder
    `MAT_ROOT/<split>/<rel>/` of per-frame files), write `<clip>.semantics.npy` and ROOT/semantics.json."""
    from datamodules.semantics import write_semantics_description

    mat_root, data_root = Path(mat_root), Path(data_root)
    written, missing = [], []
    for split in splits:
        for clip in sorted((data_root / split).rglob("*.mp4")) if (data_root / split).is_dir() else []:
            rel = clip.relative_to(data_root).with_suffix("")
            source = next((p for p in (mat_root / f"{rel}.mat", mat_root / rel) if p.exists()), None)
            if source is None:
                missing.append(str(rel))
                continue
            np.save(clip.with_suffix(".semantics.npy"), read_deep3d_mat(source))
            written.append(str(rel))
    if not written:
        raise DataError(f"no .mat file under {mat_root} matches a clip of {data_root} (expected {mat_root}/<split>/"
                        f"<identity>/<video>/<clip>.mat)")
    write_semantics_description(data_root, "deep3dfacerecon", imported_from=str(mat_root))
    return {"written": len(written), "missing": missing}


def _open_lmdb(path: Path) -> Mapping[bytes, bytes]:
    try:
        import lmdb
    except ImportError as err:
        raise DataError("reading PIRender's lmdb dataset needs the `lmdb` package (pip install lmdb)") from err
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)

    class _Reader:
        def get(self, key: bytes, default=None):
            with env.begin(write=False) as txn:
                value = txn.get(key)
            return default if value is None else value

    return _Reader()


def import_pirender_lmdb(source: str | Path, out: str | Path, resolution: int = 256,
                         reader: Optional[Mapping[bytes, bytes]] = None, fps: int = 25,
                         progress: Optional[Callable[[str], None]] = None) -> dict:
    """PIRender's processed dataset (`SOURCE/{train,test}_list.txt`, lmdb `SOURCE/<resolution>`) -> our layout in
    OUT with kind deep3dfacerecon descriptors. `reader`: a mapping with `.get(bytes key)` (tests), else lmdb."""
    import cv2

    from datamodules.semantics import write_semantics_description
    from mp_lightning.io.video import write_video

    source, out = Path(source), Path(out)
    reader = reader if reader is not None else _open_lmdb(source / str(resolution))
    counts = {}
    for split in ("train", "test"):
        listing = source / f"{split}_list.txt"
        if not listing.is_file():
            continue
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        for name in names:
            raw_len = reader.get(f"{name}-length".encode())
            if raw_len is None:
                raise DataError(f"{source}: clip '{name}' of {listing.name} has no '{name}-length' key in the lmdb")
            n = int(raw_len.decode())
            coeff = np.frombuffer(reader.get(f"{name}-coeff_3dmm".encode()), dtype=np.float32)
            if coeff.size != n * 260:
                raise DataError(f"{source}: '{name}-coeff_3dmm' holds {coeff.size} floats, expected {n} x 260")
            coeff = coeff.reshape(n, 260)
            frames = []
            for i in range(n):
                data = reader.get(f"{name}-{i:07d}".encode())
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
                if img is None:
                    raise DataError(f"{source}: frame '{name}-{i:07d}' is missing or not an image")
                frames.append(img[..., ::-1])
            parts = name.split("#")
            identity, video = parts[0], parts[1] if len(parts) > 1 else "v000"
            clip = "_".join(parts[2:]) or name
            path = out / split / identity / video / f"{clip}.mp4"
            write_video(path, np.stack(frames), fps=fps, gop=8)
            np.save(path.with_suffix(".semantics.npy"), deep3d_to_semantics(coeff[:, :257], coeff[:, 257:260]))
            if progress:
                progress(name)
        counts[split] = len(names)
    if not counts:
        raise DataError(f"{source}: no train_list.txt or test_list.txt (PIRender's lmdb layout)")
    write_semantics_description(out, "deep3dfacerecon", imported_from=str(source))
    return {"clips": counts}
