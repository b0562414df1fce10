"""FaceEmbedder: matches facenet's InceptionResnetV1 on the same weights, loads VGGFace2 offline, frozen."""
from pathlib import Path

import pytest
import torch

from mp_lightning.errors import MissingWeightsError
from mp_lightning.networks.identity import CROP_SIZE, FaceEmbedder, center_crop


@pytest.fixture(scope="module")
def embedder():
    return FaceEmbedder(pretrained=False)


def _reference(net_state, crops):
    """facenet-pytorch's own pipeline on [0, 1] crops: its fixed_image_standardization on 0..255 pixels."""
    from facenet_pytorch import InceptionResnetV1, fixed_image_standardization

    ref = InceptionResnetV1(pretrained=None, classify=False).eval()
    ref.load_state_dict(net_state)
    with torch.no_grad():
        return ref(fixed_image_standardization(crops * 255.0))


def test_matches_facenet_on_the_same_weights(embedder):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ours = embedder(x)
    expected = _reference(embedder.net.state_dict(), center_crop(x, 0.8))
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_random_init_is_seeded():
    a, b = FaceEmbedder(pretrained=False, seed=3), FaceEmbedder(pretrained=False, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_frozen_but_differentiable_wrt_input(embedder):
    assert not any(p.requires_grad for p in embedder.parameters())
    embedder.train()
    assert not embedder.training and not embedder.net.training
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    embedder(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_center_crop_geometry():
    x = torch.zeros(1, 3, 100, 100)
    x[..., 10:90, 10:90] = 1.0  # exactly the central 80 %
    crop = center_crop(x, 0.8)
    assert crop.shape == (1, 3, CROP_SIZE, CROP_SIZE)
    assert crop.min() > 0.99


def test_pretrained_loads_the_vggface2_file_offline(tmp_path, monkeypatch, embedder):
    from facenet_pytorch import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        FaceEmbedder(pretrained=True)
    assert "20180402-114759-vggface2.pt" in str(err.value) and "mp-lightning weights" in str(err.value)

    # the released file holds the 8631-way classifier too (logits.*): it must be accepted and ignored
    torch.manual_seed(5)
    released = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    target = Path(tmp_path) / "checkpoints" / "20180402-114759-vggface2.pt"
    target.parent.mkdir(parents=True)
    torch.save(released.state_dict(), target)
    loaded = FaceEmbedder(pretrained=True)
    x = torch.rand(2, 3, 64, 64)
    state = {k: v for k, v in released.state_dict().items() if not k.startswith("logits.")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _reference(state, center_crop(x, 0.8)), atol=1e-5, rtol=1e-5)


def test_mtcnn_alignment_finds_the_face_and_passes_gradients():
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float()[None] / 255.0
    emb = FaceEmbedder(pretrained=False, align="mtcnn")
    (box,) = emb.detect_boxes(image)
    # facenet-pytorch finds the astronaut's face at about (181, 62)-(268, 172)
    assert box is not None and abs(box[0] - 181) < 8 and abs(box[3] - 172) < 8
    crop = emb.crop(image)
    assert crop.shape == (1, 3, CROP_SIZE, CROP_SIZE)
    x = image.clone().requires_grad_(True)
    emb(x).sum().backward()
    # gradients reach the face region only (the crop is differentiable, the detection is not)
    assert x.grad[..., 70:160, 190:260].abs().sum() > 0
    assert x.grad[..., 300:, :100].abs().sum() == 0
    assert len(emb.state_dict()) == len(FaceEmbedder(pretrained=False).state_dict())  # MTCNN not in state


def test_no_face_falls_back_to_the_centre_crop():
    emb = FaceEmbedder(pretrained=False, align="mtcnn")
    flat = torch.full((1, 3, 64, 64), 0.5)
    assert emb.detect_boxes(flat) == [None]
    torch.testing.assert_close(emb.crop(flat), center_crop(flat, 0.8))
