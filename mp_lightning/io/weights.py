"""Every pretrained file the framework can use, where it must be, and a clear error when it is not there.

Nothing can be downloaded on an offline machine, so loaders call `require(name)` which returns the path
or raises `MissingWeightsError` naming the file, the folder it must go in and `mp-lightning weights`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from mp_lightning.errors import MissingWeightsError, UserFacingError


def torch_home() -> Path:
    """`$TORCH_HOME`, else `$XDG_CACHE_HOME/torch`, else `~/.cache/torch` (torch's own rule)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"])
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(cache) / "torch"


@dataclass(frozen=True)
class WeightFile:
    name: str  # our short name, e.g. "vgg19"
    filename: str  # file name the consuming library looks for
    subdir: str  # folder under torch_home()
    url: str  # where `mp-lightning weights --download` fetches it
    sha256_prefix: str  # torchvision-style hash prefix in the file name ("" where none)
    used_by: str  # what needs it

    @property
    def path(self) -> Path:
        return torch_home() / self.subdir / self.filename


WEIGHTS: Dict[str, WeightFile] = {
    w.name: w
    for w in [
        WeightFile(
            "vgg19", "vgg19-dcbb9e9d.pth", "hub/checkpoints",
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d",
            "VGG19 pyramid perceptual loss (MetaPortrait, FOMM, SR stages)",
        ),
        WeightFile(
            "alexnet", "alexnet-owt-7be5be79.pth", "hub/checkpoints",
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79",
            "LPIPS metric backbone (net=alex, the default)",
        ),
        WeightFile(
            "vgg16", "vgg16-397923af.pth", "hub/checkpoints",
            "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af",
            "LPIPS metric backbone (net=vgg)",
        ),
        WeightFile(
            "vggface2", "20180402-114759-vggface2.pt", "checkpoints",
            "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt", "",
            "identity embedding (facenet InceptionResnetV1): identity loss, identity similarity, AED",
        ),
        WeightFile(
            "inception_fid", "weights-inception-2015-12-05-6726825d.pth", "hub/checkpoints",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
            "6726825d", "FID metric (torch-fidelity's Inception v3)",
        ),
        WeightFile(
            "arcface_r100", "arcface_r100_ms1mv3_backbone.pth", "checkpoints",
            "", "",  # insightface's model zoo (arcface_torch, ms1mv3_arcface_r100_fp16 backbone.pth): no direct link
            "ArcFace identity metrics, as published CSIM (id_similarity_arcface, aed_arcface)",
        ),
    ]
}


def require(name: str) -> Path:
    """Path of pretrained file `name`, or a `MissingWeightsError` that says where to put it."""
    w = WEIGHTS[name]
    if w.path.is_file():
        return w.path
    raise MissingWeightsError(
        f"pretrained weights '{w.name}' ({w.used_by}) not found: expected the file {w.filename} at {w.path}. "
        + (f"Copy it there from a machine with internet ({w.url}), or run `mp-lightning weights --download`; "
           if w.url else "It has no direct download link: get it by hand (see its loader's docstring); ")
        + f"`mp-lightning weights` lists every file and whether it is present. "
        f"For tests and smoke runs set the component's `pretrained: false`."
    )


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the VGG files are 0.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(name: str, path: Optional[Path] = None) -> Optional[bool]:
    """Whether the file's sha256 starts with the hash prefix in its name (torchvision's rule).

    None when the file has no such prefix (nothing to check against) or does not exist.
    """
    w = WEIGHTS[name]
    path = Path(path) if path is not None else w.path
    if not w.sha256_prefix or not path.is_file():
        return None
    return sha256(path).startswith(w.sha256_prefix)


def download(name: str, timeout: float = 30.0, progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Fetch pretrained file `name` to its expected path (atomic: temp file, hash check, rename).

    Raises `UserFacingError` when the machine is offline or the hash does not match.
    `progress(bytes_done, bytes_total)` is called after each chunk (total 0 when unknown).
    """
    w = WEIGHTS[name]
    if not w.url:
        raise UserFacingError(f"'{w.name}' has no direct download link ({w.used_by}): get {w.filename} by hand and "
                              f"put it at {w.path}")
    w.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=w.filename + ".", suffix=".part", dir=w.path.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(w.url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UserFacingError(
                f"cannot download '{w.name}' from {w.url}: {reason}. Without internet, copy {w.filename} "
                f"from another machine to {w.path}"
            ) from err
        if w.sha256_prefix and not sha256(tmp).startswith(w.sha256_prefix):
            raise UserFacingError(
                f"downloaded '{w.name}' from {w.url} but its sha256 does not start with {w.sha256_prefix} "
                f"(the hash in its file name): corrupted or changed upstream; nothing was written to {w.path}"
            )
        shutil.move(str(tmp), str(w.path))
    finally:
        if tmp.exists():
            tmp.unlink()
    return w.path
