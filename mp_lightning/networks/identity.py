"""Face-recognition embedder for the identity loss and the identity metrics (ID similarity, AED).

The embedding network is facenet-pytorch's `InceptionResnetV1` trained on VGGFace2 (FaceNet, 512-d,
L2-normalised). Note that most recent talking-head papers report CSIM with ArcFace, so our numbers are
comparable with each other, not with those papers.

The net was trained on MTCNN face crops with a margin, resized to 160x160 and standardised with
`(x * 255 - 127.5) / 128` (facenet's `fixed_image_standardization`). Two ways to get such crops:

- `align="center"`: a fixed central crop of the frame. Talking-head frames (VoxCeleb / FOMM style) are
  already face-centred crops, so a fixed box is a good stand-in for detection; it is differentiable
  end to end, which the identity loss needs.
- `align="mtcnn"`: detect the face with facenet's MTCNN (its weights ship in the wheel), crop the box plus
  margin. The detection is not differentiable (the crop itself still passes gradients); meant for
  evaluation. Frames where no face is found fall back to the centre crop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mp_lightning.state_dicts import load_strict, read_checkpoint

EMBEDDING_DIM = 512
CROP_SIZE = 160


def embedding_kind(pretrained: bool = True, seed: int = 0) -> str:
    """The name of the embedding space a `FaceEmbedder` maps into: backbone and weights.

    "facenet-vggface2" for the released weights (what `mp-lightning preprocess` writes into
    `<clip>.identity.npy` and declares in ROOT/identity.json); a randomly initialised net (tests) is
    a space of its own, "facenet-random-seed<seed>". Embeddings of different kinds are not comparable.
    """
    return "facenet-vggface2" if pretrained else f"facenet-random-seed{seed}"


def fixed_image_standardization(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> facenet's input range, (x * 255 - 127.5) / 128 (about [-1, 1])."""
    return (x * 255.0 - 127.5) / 128.0


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    # antialias: downscaling 256/512 px frames to 160 without it aliases high frequencies into the embedding
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def center_crop(x: torch.Tensor, fraction: float, size: int = CROP_SIZE) -> torch.Tensor:
    """Central square crop covering `fraction` of the shorter side, resized to `size`.

    x: (B, 3, H, W) in [0, 1]  ->  (B, 3, size, size) in [0, 1]; differentiable.
    """
    h, w = x.shape[-2:]
    side = max(1, int(round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return _resize(x[..., top:top + side, left:left + side], size)


class FaceEmbedder(nn.Module):
    """Frozen FaceNet identity embedding of face crops.

    Args:
        backbone: only "facenet" (InceptionResnetV1) for now.
        pretrained: load the VGGFace2 weights via `mp_lightning.io.weights.require("vggface2")` (raises
            `MissingWeightsError` when the file is absent); False = seeded random init, for tests.
        align: "center" (fixed crop, differentiable) or "mtcnn" (detected crop, evaluation).
        center_fraction: share of the frame's shorter side kept by the centre crop. 0.8 keeps the face
            plus a margin in VoxCeleb-style 256 px crops, close to the MTCNN-with-margin crops it was
            trained on.
        mtcnn_margin: margin around the detected box in pixels of the 160 px crop (facenet-pytorch's
            `MTCNN(margin=...)` convention).
        seed: RNG seed of the random init when pretrained=False, so two instances are identical.

    forward: x (B, 3, H, W) in [0, 1] -> (B, 512) unit-norm embeddings. Parameters are frozen and the
    module stays in eval mode (BatchNorm statistics and dropout off), but gradients flow to `x`.
    """

    def __init__(
        self,
        backbone: str = "facenet",
        pretrained: bool = True,
        align: str = "center",
        center_fraction: float = 0.8,
        mtcnn_margin: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        if backbone != "facenet":
            raise ValueError(f"FaceEmbedder: unknown backbone {backbone!r}; available: 'facenet'")
        if align not in ("center", "mtcnn"):
            raise ValueError(f"FaceEmbedder: align must be 'center' or 'mtcnn', got {align!r}")
        from facenet_pytorch import InceptionResnetV1

        self.backbone = backbone
        self.kind = embedding_kind(pretrained, seed)  # the embedding space (see `embedding_kind`)
        self.dim = EMBEDDING_DIM
        self.align = align
        self.center_fraction = float(center_fraction)
        self.mtcnn_margin = int(mtcnn_margin)
        if pretrained:
            from mp_lightning.io.weights import require

            path = require("vggface2")  # before building: a missing file fails fast with a clear message
            self.net = InceptionResnetV1(pretrained=None, classify=False)
            # the released file also holds the 8631-way VGGFace2 classifier; the embedding does not use it
            state = {k: v for k, v in read_checkpoint(path).items() if not k.startswith("logits.")}
            load_strict(self.net, state, str(path))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = InceptionResnetV1(pretrained=None, classify=False)
        self.net.requires_grad_(False)
        self._mtcnn = None  # built lazily: only align="mtcnn" needs it
        self.eval()

    def train(self, mode: bool = True) -> "FaceEmbedder":
        # frozen network: BatchNorm must keep its running statistics even inside a training step
        return super().train(False)

    # ----------------------------------------------------------------------------------------- crops
    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, 160, 160) in [0, 1] face crops, per `align`."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FaceEmbedder expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
        if self.align == "center":
            return center_crop(x, self.center_fraction)
        return self._mtcnn_crop(x)

    def _detector(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            # select_largest: a talking-head frame has one subject, the largest face
            mtcnn = MTCNN(image_size=CROP_SIZE, margin=self.mtcnn_margin, select_largest=True, device="cpu")
            # kept out of the module tree: its weights ship in the wheel and must not enter checkpoints
            object.__setattr__(self, "_mtcnn", mtcnn)
        return self._mtcnn

    @torch.no_grad()
    def detect_boxes(self, x: torch.Tensor) -> list:
        """MTCNN face boxes [x0, y0, x1, y1] in pixels (or None when no face) for each image of (B, 3, H, W)."""
        images = (x.detach().clamp(0, 1) * 255.0).round().permute(0, 2, 3, 1).to("cpu", torch.float32)
        boxes, _ = self._detector().detect(images)
        return [None if b is None else [float(v) for v in b[0]] for b in boxes]

    def _mtcnn_crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        crops = []
        for image, box in zip(x, self.detect_boxes(x)):
            if box is None:
                crops.append(center_crop(image[None], self.center_fraction))
                continue
            # same margin rule as facenet-pytorch's extract_face: `margin` is in pixels of the output crop
            mx = self.mtcnn_margin * (box[2] - box[0]) / (CROP_SIZE - self.mtcnn_margin)
            my = self.mtcnn_margin * (box[3] - box[1]) / (CROP_SIZE - self.mtcnn_margin)
            x0, y0 = int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0))
            x1, y1 = int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h))
            if x1 - x0 < 2 or y1 - y0 < 2:
                crops.append(center_crop(image[None], self.center_fraction))
                continue
            crops.append(_resize(image[None, :, y0:y1, x0:x1], CROP_SIZE))
        return torch.cat(crops)

    # --------------------------------------------------------------------------------------- forward
    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, 160, 160) in [0, 1] aligned crops -> (B, 512) unit-norm embeddings."""
        return self.net(fixed_image_standardization(crops))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 512) unit-norm embeddings."""
        return self.embed_crops(self.crop(x))

