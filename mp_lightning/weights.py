"""Every pretrained file the framework can use, where it must be, and a clear error when it is not there.

Nothing can be downloaded on an offline machine, so loaders call `require(name)` which returns the path
or raises `MissingWeightsError` naming the file, the folder it must go in and `mp-lightning weights`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from mp_lightning.errors import MissingWeightsError


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
    ]
}


def require(name: str) -> Path:
    """Path of pretrained file `name`, or a `MissingWeightsError` that says where to put it."""
    w = WEIGHTS[name]
    if w.path.is_file():
        return w.path
    raise MissingWeightsError(
        f"pretrained weights '{w.name}' ({w.used_by}) not found: expected the file {w.filename} at {w.path}. "
        f"Copy it there from a machine with internet ({w.url}), or run `mp-lightning weights --download`; "
        f"`mp-lightning weights` lists every file and whether it is present. "
        f"For tests and smoke runs set the component's `pretrained: false`."
    )
