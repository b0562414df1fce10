"""The metric suite on 2 CPU DDP ranks (gloo) equals the single-process values on the same samples.

Raw torch.distributed with spawned processes (not Lightning's `ddp` launcher, which re-runs pytest).
Ranks get unequal shares (3 samples vs 1) so a mean of per-rank means would be caught.
"""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mp_lightning.networks.dlib_face import dlib_unavailable_reason
from mp_lightning.metrics.keypoints import mediapipe_unavailable_reason
from mp_lightning.networks.st_lpips import st_lpips_unavailable_reason

ENABLED = ["lpips", "psnr", "ssim", "l1", "id_similarity", "aed", "akd", "st_lpips", "id_similarity_dlib", "aed_dlib"]
# the random trunks are logged as *_random; dlib also reports how many predictions had no face
EXPECTED = ["lpips_random", "psnr", "ssim", "l1", "id_similarity_random", "aed_random", "akd"]
if st_lpips_unavailable_reason() is None:
    EXPECTED += ["st_lpips"]
if dlib_unavailable_reason() is None:
    EXPECTED += ["id_similarity_dlib", "aed_dlib", "dlib_no_face"]
if mediapipe_unavailable_reason() is None:  # AKD's offline detector also counts pairs without a face
    EXPECTED += ["akd_no_face"]


def _config():
    return {"enabled": ENABLED, "lpips": {"pretrained": False}, "identity": {"pretrained": False}, "fid": False}


def _data():
    """Synthetic faces (dlib finds them at 128 px) with one noise prediction, so `dlib_no_face` is 1."""
    from tests.test_offline_metrics import _faces

    g = torch.Generator().manual_seed(0)
    faces, _ = _faces(128)
    n, k = 4, 5
    batch = {"source": faces[[0, 2, 4, 1]], "driving": faces[[1, 3, 5, 0]],
             "driving_landmarks": torch.rand(n, k, 2, generator=g)}
    prediction = faces[[1, 2, 5, 0]].clone()
    prediction[1] = torch.rand(3, 128, 128, generator=g)
    outputs = {"prediction": prediction, "prediction_landmarks": torch.rand(n, k, 2, generator=g)}
    return outputs, batch


def _take(d, idx):
    return {key: value[idx] for key, value in d.items()}


def _worker(rank, world, port, result_path):
    from mp_lightning.metrics.suite import MetricSuite

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        outputs, batch = _data()
        idx = slice(0, 3) if rank == 0 else slice(3, 4)
        suite = MetricSuite(_config())
        suite.update(_take(outputs, idx), _take(batch, idx))
        values = suite.compute()
        torch.save(values, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes importing torch, lpips, facenet, stlpips, dlib: ~70 s on 2 shared cores
def test_two_ranks_equal_single_process(tmp_path):
    from mp_lightning.metrics.suite import MetricSuite

    result_path = str(tmp_path / "values")
    mp.spawn(_worker, args=(2, _free_port(), result_path), nprocs=2, join=True)
    ranks = [torch.load(f"{result_path}.{r}") for r in range(2)]

    outputs, batch = _data()
    single = MetricSuite(_config())
    single.update(outputs, batch)
    expected = single.compute()

    assert set(expected) == set(EXPECTED)
    assert expected.get("dlib_no_face", 1) == 1  # the noise prediction, counted across ranks
    for values in ranks:  # every rank gets the same, global value
        assert set(values) == set(expected)
        for key in expected:
            assert values[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
