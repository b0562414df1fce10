"""MetaPortrait stage 3 (temporal super-resolution) on the tiny synthetic dataset: real entry points (its
fast-dev-runs are tests/test_experiments.py's)."""
from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import REFERENCE

SR_TINY = "metaportrait/sr_tiny.yaml"
GOLDEN = REFERENCE / "golden" / "metaportrait"


def test_forward_contract_and_upscale_clip(built_stage):
    built = built_stage(SR_TINY)
    stage = built.stage.eval()
    batch = built.batch("val")
    b, t, _, h, w = batch["frames"].shape
    with torch.no_grad():
        out = stage(batch)
    assert out["prediction"].shape == (b, t, 3, h, w)
    assert out["lq"].shape == (b, t, 3, h // 2, w // 2)
    assert 0 <= out["prediction"].min() and out["prediction"].max() <= 1
    clip = torch.rand(7, 3, h // 2, w // 2)
    stage.hp.chunk, stage.hp.chunk_overlap = 4, 2
    up = stage.upscale_clip(clip, progress=False)
    assert up.shape == (7, 3, h, w)
    # one chunk covering the whole clip: the same as running the EMA net once
    stage.hp.chunk = 16
    with torch.no_grad():
        whole = stage({"lq": clip[None]})["prediction"][0]
    assert torch.allclose(stage.upscale_clip(clip), whole, atol=1e-5)


def test_degradations_change_lq_only_in_training(built_stage):
    stage = built_stage(SR_TINY, "model.degradation.blur_sigma=[1.0,2.0]", "model.degradation.noise_std=[0.02,0.05]",
                        "model.degradation.jpeg_quality=[30,50]").stage
    frames = torch.rand(1, 3, 3, 64, 64)
    stage.eval()
    clean = stage.make_lq(frames)
    assert clean.shape == (1, 3, 3, 32, 32)
    stage.train()
    dirty = stage.make_lq(frames)
    assert dirty.shape == clean.shape and (dirty - clean).abs().mean() > 1e-3


def test_validation_scores_the_prediction_and_bicubic_through_the_metric_suite(built_stage):
    """SR logs no metric itself: its validation output carries bicubic upsampling of the same LQ input as a
    variant, which the suite scores beside the prediction (`val/psnr` and `val/bicubic/psnr`)."""
    from datamodules.degradations import bicubic
    from mp_lightning.metrics.suite import MetricSuite

    built = built_stage(SR_TINY, "model.bicubic_skip=false")  # else the untrained stage IS bicubic
    stage, dm = built.stage, built.datamodule
    stage.eval()
    batch = next(iter(dm.val_dataloader()[0]))
    with torch.no_grad():
        out = stage.validation_step(batch, 0)
    baseline = out["variants"]["bicubic"]["prediction"]
    assert torch.equal(baseline, bicubic(out["lq"], batch["frames"].shape[-1]))
    scores = {}
    for name, outputs in (("sr", out), ("bicubic", out["variants"]["bicubic"])):
        suite = MetricSuite({"enabled": ["psnr", "l1", "warp_error"], "fid": False}, reference_available=True)
        suite.update(outputs, batch)
        scores[name] = suite.compute()
    assert set(scores["sr"]) == set(scores["bicubic"]) == {"psnr", "l1", "warp_error"}
    assert scores["sr"]["psnr"] != scores["bicubic"]["psnr"]


def test_ema_tracks_the_generator_and_is_used_for_validation(built_stage):
    stage = built_stage(SR_TINY, "model.ema_warmup=false", "model.ema_decay=0.5").stage
    with torch.no_grad():
        for p in stage.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = [e.clone() for e in stage.ema.parameters()]
    stage.update_ema()
    for b, e, p in zip(before, stage.ema.parameters(), stage.generator.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * p, atol=1e-6)
    assert "ema_updates" in stage.state_dict() and any(k.startswith("ema.") for k in stage.state_dict())
    lq = torch.rand(1, 3, 3, 32, 32)
    stage.eval()
    with torch.no_grad():
        pred = stage({"lq": lq})["prediction"]
        assert torch.allclose(pred, stage.run_net(stage.ema, lq).clamp(0, 1))
        assert not torch.allclose(pred, stage.run_net(stage.generator, lq).clamp(0, 1))


@pytest.mark.slow
def test_tiny_sr_beats_bicubic_after_short_cpu_training(built_stage):
    """A short CPU training (L1 only, to stay fast) must beat bicubic upsampling in PSNR on validation windows.

    sr_tiny predicts a residual over bicubic that starts at zero, so the check is that training improves on
    bicubic rather than merely catching up with it. The low-quality input is blurred (sigma 1.5, also on
    validation with a fixed seed), as in GFPGAN-style restoration: on the smooth synthetic faces a clean 2x
    bicubic is already near-optimal, so restoring detail is what the network can add. EMA off (decay 0)
    because 150 steps are too few for an EMA to catch up with the weights."""
    from datamodules.degradations import bicubic
    from mp_lightning.metrics.pixel import PSNR

    built = built_stage(SR_TINY, "model.losses.perceptual=0", "model.losses.style=0", "model.losses.l1=1",
                        "model.ema_decay=0.0", "model.degradation.blur_sigma=[1.5,1.5]",
                        "model.degradation.on_validation=true", "data.augment_flip=false", seed=0)
    stage, dm = built.stage, built.datamodule
    train = [b["frames"] for _, b in zip(range(4), dm.train_dataloader())]
    val = [b["frames"] for b in dm.val_dataloader()[0]]
    opt = torch.optim.Adam([p for p in stage.generator.parameters() if p.requires_grad], lr=5e-4, betas=(0.9, 0.99))
    start = time.time()
    stage.train()
    steps = 150
    for step in range(steps):
        gt = train[step % len(train)]
        loss = stage.losses(stage.run_net(stage.generator, stage.make_lq(gt)), gt)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        stage.update_ema()
    stage.eval()
    sr, bic = PSNR(), PSNR()  # mean per-frame PSNR over the validation windows
    with torch.no_grad():
        for gt in val:
            out = stage({"frames": gt})
            sr.update(out["prediction"].flatten(0, 1), gt.flatten(0, 1))
            bic.update(bicubic(out["lq"], gt.shape[-1]).flatten(0, 1), gt.flatten(0, 1))
    sr, bic = sr.compute().item(), bic.compute().item()
    print(f"tiny SR after {steps} steps ({time.time() - start:.1f} s): PSNR {sr:.3f} dB vs bicubic {bic:.3f} dB")
    assert sr > bic + 0.05, (sr, bic)


@pytest.mark.slow
@pytest.mark.skipif(not (GOLDEN / "sr_ckpt.pth").is_file(), reason="golden reference data absent")
def test_import_round_trip(tmp_path):
    from mp_lightning.checkpoints import converters
    from mp_lightning.stages.base import load_stage, save_stage_checkpoint
    from mp_lightning.stages.super_resolution import SuperResolutionStage

    stage, info = converters()["metaportrait-sr"](GOLDEN / "sr_ckpt.pth")
    assert isinstance(stage, SuperResolutionStage) and info["num_keys"] == 341
    path = save_stage_checkpoint(stage, tmp_path / "sr.ckpt")
    del stage
    loaded = load_stage(path)
    io = torch.load(GOLDEN / "sr_io.pt", map_location="cpu", weights_only=True)
    lq = io["inputs"]["lq"]
    with torch.no_grad():
        out = loaded.run_net(loaded.ema, lq)
    assert (out - io["outputs"]["output"]).abs().max().item() <= 1e-4
