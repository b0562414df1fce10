"""PIRenderStage and motion descriptors as data: windows, the scan check, the descriptor-kind guard, the official
two-phase recipe (both directions, warp-only phase, a fresh optimiser at the switch, EMA), and the tiny experiment
end to end (train -> eval -> animate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mp_lightning.config.compose import compose
from mp_lightning.errors import DataError
from tests.conftest import EXPERIMENTS, tiny_overrides

TINY = EXPERIMENTS / "baselines" / "pirender_tiny.yaml"


def _cfg(data_root, run_root, *extra):
    return compose(TINY, tiny_overrides(data_root, run_root, *extra))


# ------------------------------------------------------------------------------------------------ data
def test_semantic_window_clamps_indices():
    from datamodules.semantics import semantic_window

    sem = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 73), np.float32)
    w = semantic_window(sem, 1, 3)
    assert w.shape == (73, 7)
    np.testing.assert_array_equal(w[0], [0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(semantic_window(sem, 9, 2)[5], [7, 8, 9, 9, 9])


@pytest.mark.parametrize("mode", ["pairs", "cross_identity", "windows"])
def test_batches_carry_the_windows_of_their_frames(tiny_data, mode):
    from datamodules import VoxCelebDataModule
    from datamodules.semantics import semantic_window, semantics_path_for

    dm = VoxCelebDataModule(dict(root=str(tiny_data), image_size=64, batch_size=2, num_workers=0, mode=mode,
                                 semantics=True, semantic_radius=13, augment_flip=False, window_length=3))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["source_semantics"].shape == batch["driving_semantics"].shape == (2, 73, 27)
    assert batch["semantics_kind"] == ["synthetic", "synthetic"]
    clips = {c.name: c for c in dm.test_dataset.clips}
    driving_clips = batch.get("driving_clip", batch["clip"])
    for i in range(2):
        for prefix, name in (("source", batch["clip"][i]), ("driving", driving_clips[i])):
            sem = np.load(semantics_path_for(clips[name].path))
            expected = semantic_window(sem, int(batch[f"{prefix}_index"][i]), 13)
            np.testing.assert_array_equal(batch[f"{prefix}_semantics"][i].numpy(), expected)


def test_synthetic_descriptors_are_the_rendered_pose(tiny_data):
    """The writer's descriptors are the exact parameters its faces were rendered with."""
    from datamodules.semantics import ANGLES, CROP, semantics_path_for
    from datamodules.synthetic import make_motion

    desc = json.loads((tiny_data / "semantics.json").read_text())
    assert desc["kind"] == "synthetic" and desc["dim"] == 73
    clip = tiny_data / "train" / "id00000" / "v000" / "00001.mp4"
    sem = np.load(semantics_path_for(clip))
    assert sem.shape == (16, 73) and sem.dtype == np.float32
    # the writer's motion stream of identity 0, video 0, clip 1 at seed 0
    motion = make_motion(np.random.default_rng(np.random.SeedSequence([0, 2, 0, 0, 1])), 16)
    np.testing.assert_allclose(sem[:, ANGLES], np.stack([motion.pitch, motion.yaw, motion.roll], 1), atol=1e-6)
    np.testing.assert_allclose(sem[:, CROP.start + 1], 64 * (0.5 + motion.tx), atol=1e-4)
    assert np.std(sem[:, ANGLES][:, 1]) > 0


def test_scan_check_names_the_bad_descriptor_file(tmp_path):
    from datamodules import VoxCelebDataModule, write_synthetic_dataset

    write_synthetic_dataset(tmp_path, identities=2, videos_per_identity=1, clips_per_video=2, frames=6, size=32,
                            test_fraction=0.5, workers=0)
    bad = sorted((tmp_path / "train").rglob("*.semantics.npy"))[0]
    np.save(bad, np.load(bad)[:-1])
    cfg = dict(root=str(tmp_path), image_size=32, batch_size=1, num_workers=0, semantics=True, augment_flip=False,
               val_split="test")
    with pytest.raises(DataError, match=rf"{bad.name} have 5 rows, the clip has 6 frames"):
        VoxCelebDataModule({**cfg, "strict": True}).setup("fit")
    with pytest.warns(RuntimeWarning, match=bad.name):
        dm = VoxCelebDataModule(cfg)
        dm.setup("fit")
    assert len(dm.train_dataset.clips) == 1
    with pytest.raises(DataError, match="augment_flip"):
        VoxCelebDataModule({**cfg, "augment_flip": True})


# ------------------------------------------------------------------------------------------------ stage
@pytest.fixture(scope="module")
def stage_and_batch(built_stage, tmp_path_factory):
    built = built_stage(TINY, run_root=tmp_path_factory.mktemp("runs"), seed=0)
    return built.stage, built.batch("train")


def test_forward_contract(stage_and_batch):
    stage, batch = stage_and_batch
    stage.eval()
    with torch.no_grad():
        out = stage(batch)
    b, _, h, w = batch["source"].shape
    assert out["prediction"].shape == out["deformed"].shape == (b, 3, h, w)
    assert 0 <= out["prediction"].min() and out["prediction"].max() <= 1
    # before the editing net has trained, the prediction is the warped source
    torch.testing.assert_close(out["prediction"], out["deformed"].clamp(0, 1))
    assert out["flow_field"].shape == (b, 2, h // 2, w // 2) and out["descriptor"].shape == (b, 32, 1)


def test_losses_use_both_directions_and_the_style_term_only_in_the_full_phase(stage_and_batch):
    stage, batch = stage_and_batch
    seen = []
    hook = stage.generator.mapping_net.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        warp_terms = stage.losses(batch, full=False)
        full_terms = stage.losses(batch, full=True)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], torch.cat([batch["driving_semantics"], batch["source_semantics"]]))
    assert set(warp_terms) == {"warp_perceptual", "loss"}
    assert set(full_terms) == {"warp_perceptual", "final_perceptual", "style", "loss"}
    assert full_terms["style"] > 0


def test_model_refuses_descriptors_of_another_kind(built_stage, tiny_data, tmp_path):
    from mp_lightning.runs.training import build_stage

    built = built_stage(TINY, "model.descriptor=deep3dfacerecon", run_root=tmp_path)
    stage, dm = built.stage.eval(), built.datamodule
    with pytest.raises(DataError, match="expects 'deep3dfacerecon'.*'synthetic'"):
        stage(built.batch("train"))
    with pytest.raises(DataError, match="data.semantics=true"):
        stage({"source": torch.rand(1, 3, 64, 64)})
    from mp_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="model.descriptor.*deep3dfacrecon"):
        build_stage(_cfg(tiny_data, tmp_path, "model.descriptor=deep3dfacrecon"), dm)


class _PhaseProbe:
    """Per training batch: global step, the full-phase Adam's state size, an editing-net and an EMA weight sum."""

    def __init__(self):
        self.rows = []

    def __call__(self, trainer, stage):
        full_opt = trainer.optimizers[1]
        self.rows.append((trainer.global_step, len(full_opt.state),
                          float(stage.generator.editing_net.decoder.final.model[0].weight.detach().sum()),
                          float(stage.generator_ema.mapping_net.first[0].weight.sum()),
                          float(stage.generator.mapping_net.first[0].weight.detach().sum())))


def test_warp_phase_then_full_phase_with_a_fresh_optimizer(tiny_data, tmp_path):
    import lightning as L

    from mp_lightning.runs.training import build_datamodule, build_stage

    probe = _PhaseProbe()

    class Cb(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            probe(trainer, pl_module)

    L.seed_everything(0)
    cfg = _cfg(tiny_data, tmp_path, "model.warp_steps=3", "data.batch_size=1")
    dm = build_datamodule(cfg)
    stage = build_stage(cfg, dm)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Cb()], limit_val_batches=0)
    trainer.fit(stage, datamodule=dm)
    steps = [r[0] for r in probe.rows]
    assert steps == list(range(6))
    # the full-phase Adam has no state until the switch, and the editing net does not move before it
    assert [r[1] for r in probe.rows[:4]] == [0, 0, 0, 0] and probe.rows[5][1] > 0
    editing = [r[2] for r in probe.rows]
    assert editing[0] == editing[1] == editing[2] == editing[3] and editing[5] != editing[3]
    # the EMA follows the trained weights at its decay: strictly between the init and the current weights
    ema_now, net_now, ema_init = probe.rows[-1][3], probe.rows[-1][4], probe.rows[0][3]
    assert ema_now != ema_init and ema_now != net_now
    assert int(stage.editing_trained) == 1
    # the warp phase only trains what reaches the warp loss; conv1/norm1 of the official res blocks never train
    frozen = [n for n, p in stage.generator.named_parameters() if not p.requires_grad]
    assert frozen and all(".conv1." in n or ".norm1." in n for n in frozen)


@pytest.mark.slow
def test_tiny_experiment_trains_evaluates_and_animates(tiny_data, tmp_path):
    """`train`, `eval` and `animate --driving-semantics` on pirender_tiny through the CLI."""
    from mp_lightning.cli import main

    overrides = tiny_overrides(tiny_data, tmp_path, "trainer.max_steps=12", "model.warp_steps=6",
                               "trainer.check_val_every_n_epoch=1", "data.val_max_samples=2")
    assert main(["train", str(TINY), *overrides]) == 0
    ckpt = tmp_path / "pirender_tiny" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert main(["eval", str(TINY), *overrides, f"ckpt_path={ckpt}", "data.val_max_samples=2"]) == 0
    metrics = json.loads((tmp_path / "pirender_tiny" / "eval" / "metrics.json").read_text())
    assert metrics["stage"] == "pirender" and any("lpips" in k for k in metrics["metrics"])
    assert metrics["descriptor"] == "synthetic"
    clips = sorted((tiny_data / "test").rglob("*.mp4"))
    sem = tmp_path / "drive.npy"
    np.save(sem, np.load(clips[-1].with_suffix(".semantics.npy"))[:5])
    out = tmp_path / "anim.mp4"
    assert main(["animate", "--checkpoint", str(ckpt), "--source", str(clips[0]), "--driving", str(clips[-1]),
                 "--driving-semantics", str(sem), "--max-frames", "5", "--out", str(out), "--side-by-side"]) == 0
    from mp_lightning.io.video import read_video

    frames = read_video(out)
    assert len(frames) == 5 and frames.shape[2] == 3 * 64


def test_cross_identity_animation_takes_the_source_crop_ratio(stage_and_batch, monkeypatch):
    """Official `--cross_id`: the driving crop ratio is scaled by source ratio / ratio of the driving frame closest
    to the source (0.3 expression + 0.7 angle L1); the other channels are the driving's."""
    from datamodules.semantics import semantic_windows

    stage, _ = stage_and_batch
    rng = np.random.default_rng(0)
    driving = rng.normal(size=(6, 73)).astype(np.float32)
    driving[:, 70] = [0.40, 0.42, 0.44, 0.46, 0.48, 0.50]
    source = driving[3].copy()
    source[70] = 0.60  # another person's face size; frame 3 has the source's expression and angles
    seen = {}
    monkeypatch.setattr(stage, "_render_windows", lambda src, windows, *a: seen.setdefault("w", windows))
    stage.animate(torch.rand(3, 64, 64), driving_semantics=torch.from_numpy(driving),
                  source_semantics=torch.from_numpy(source))
    expected = driving.copy()
    expected[:, 70] *= 0.60 / 0.46
    np.testing.assert_allclose(seen["w"].numpy(), semantic_windows(expected, 13), rtol=1e-6)


def test_csv_run_writes_the_validation_clip(tiny_data, tmp_path):
    """The media callback animates PIRender with the validation clip's descriptors."""
    from mp_lightning.cli import main

    assert main(["train", str(TINY), *tiny_overrides(
        tiny_data, tmp_path, "name=pir_media", "logger.type=csv", "trainer.max_steps=2", "data.samples_per_epoch=2",
        "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1", "callbacks.media.video_frames=4")]) == 0
    assert list((tmp_path / "pir_media" / "media").glob("val_clip_step*.mp4"))
    assert "val/lpips" in (tmp_path / "pir_media" / "csv" / "metrics.csv").read_text()
