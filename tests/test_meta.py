"""Reptile meta-learning: the outer update by hand, 2-rank DDP against one process, resume, real stages."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

from mp_lightning.stages.base import Stage
from mp_lightning.reptile import outer_update
from mp_lightning.stages.meta import MetaLearningModule
from tests.conftest import EXPERIMENTS, tiny_overrides


class ToyStage(Stage):
    """prediction = w * source + b (per channel): small enough to work the Adam steps out by hand."""

    def __init__(self):
        super().__init__(config={"model": {}}, landmark_spec=None)
        self.w = nn.Parameter(torch.tensor([0.5, -0.25, 1.5], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.1, 0.0, -0.2], dtype=torch.float64))

    @classmethod
    def typed_model_config(cls, model):
        return None

    def forward(self, batch):
        return {"prediction": self.w.view(1, 3, 1, 1) * batch["source"] + self.b.view(1, 3, 1, 1)}

    def adaptation_loss(self, batch):
        return ((self(batch)["prediction"] - batch["driving"]) ** 2).mean()

    def adaptation_param_groups(self, warp_lr_multiplier):
        return [{"params": [self.w, self.b], "mult": 1.0, "name": "toy"}]


def toy_tasks(num_tasks: int, support: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(num_tasks, 3, 4, 4, generator=g, dtype=torch.float64)
    drv = torch.rand(num_tasks, support, 3, 4, 4, generator=g, dtype=torch.float64)
    return {
        "source": src, "support_driving": drv, "query_driving": drv,
        "source_index": torch.zeros(num_tasks, dtype=torch.long),
        "support_driving_index": torch.ones(num_tasks, support, dtype=torch.long),
        "query_driving_index": torch.ones(num_tasks, support, dtype=torch.long),
        "clip": [f"c{i}" for i in range(num_tasks)], "identity": [f"id{i}" for i in range(num_tasks)],
    }


def toy_meta(rule: str, **model) -> MetaLearningModule:
    config = {"stage": "meta", "model": {"inner_stage": "warp", "outer_rule": rule, **model}}
    return MetaLearningModule(config, landmark_spec=None, inner=ToyStage())


def test_classic_reptile_one_task_matches_hand_computation():
    lr, eps, steps, betas = 0.05, 0.3, 2, (0.5, 0.999)
    meta = toy_meta("reptile", inner_steps=steps, inner_lr=lr, inner_betas=list(betas), outer_lr=eps, grad_clip=0.0)
    batch = toy_tasks(1)
    w0, b0 = meta.inner.w.detach().clone(), meta.inner.b.detach().clone()

    # by hand: Adam (bias-corrected, eps 1e-8) on L = mean((w s + b - d)^2) over the support pairs
    s, d = batch["source"][0].unsqueeze(0), batch["support_driving"][0]
    theta = [w0.clone(), b0.clone()]
    m = [torch.zeros(3, dtype=torch.float64) for _ in range(2)]
    v = [torch.zeros(3, dtype=torch.float64) for _ in range(2)]
    n = d.numel()
    for t in range(1, steps + 1):
        r = theta[0].view(1, 3, 1, 1) * s + theta[1].view(1, 3, 1, 1) - d
        grads = [(2 * r * s).sum(dim=(0, 2, 3)) / n, (2 * r).sum(dim=(0, 2, 3)) / n]
        for i, gi in enumerate(grads):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * gi
            v[i] = betas[1] * v[i] + (1 - betas[1]) * gi ** 2
            mhat, vhat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            theta[i] = theta[i] - lr * mhat / (vhat.sqrt() + 1e-8)
    expected = [w0 + eps * (theta[0] - w0), b0 + eps * (theta[1] - b0)]

    result = meta.inner_loop(batch)
    # phi is back in place after the inner loop, and the difference is theta_N - phi
    assert torch.equal(meta.inner.w.detach(), w0) and torch.equal(meta.inner.b.detach(), b0)
    torch.testing.assert_close(result["delta_sum"][0], theta[0] - w0, rtol=1e-12, atol=1e-12)
    opt = meta.configure_optimizers()["optimizer"]
    outer_update(result["params"], result["delta_sum"], result["num_tasks"], opt)
    torch.testing.assert_close(meta.inner.w.detach(), expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(meta.inner.b.detach(), expected[1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(expected[0], w0)  # the update is not trivially zero


def test_mean_over_tasks_and_official_adam_step():
    meta = toy_meta("official_adam", inner_steps=2, inner_lr=0.05, outer_lr=0.01, grad_clip=0.0)
    batch = toy_tasks(3)
    w0 = meta.inner.w.detach().clone()
    result = meta.inner_loop(batch)
    deltas = []
    for i in range(3):  # each task alone, from phi
        one = toy_meta("official_adam", inner_steps=2, inner_lr=0.05, grad_clip=0.0)
        deltas.append(one.inner_loop({k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items()})
                      ["delta_sum"][0])
    torch.testing.assert_close(result["delta_sum"][0], sum(deltas), rtol=1e-10, atol=1e-12)
    opt = meta.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.Adam)
    outer_update(result["params"], result["delta_sum"], 3, opt)
    # Adam's first step moves each coordinate by lr in the direction of the mean difference
    expected = w0 + 0.01 * torch.sign(sum(deltas) / 3)
    torch.testing.assert_close(meta.inner.w.detach(), expected, rtol=0, atol=1e-7)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        meta = toy_meta("official_adam", inner_steps=2, inner_lr=0.05, outer_lr=0.01, grad_clip=0.3)
        opt = meta.configure_optimizers()["optimizer"]
        batch = toy_tasks(2)
        for step in range(2):  # two outer steps: Adam state must also evolve identically
            mine = {k: (v[rank:rank + 1]) for k, v in batch.items()}
            r = meta.inner_loop(mine)
            outer_update(r["params"], r["delta_sum"], r["num_tasks"], opt, grad_clip=0.3)
        torch.save({k: v.detach().clone() for k, v in meta.inner.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_ddp_matches_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    meta = toy_meta("official_adam", inner_steps=2, inner_lr=0.05, outer_lr=0.01, grad_clip=0.3)
    opt = meta.configure_optimizers()["optimizer"]
    batch = toy_tasks(2)
    for _ in range(2):
        r = meta.inner_loop(batch)
        outer_update(r["params"], r["delta_sum"], r["num_tasks"], opt, grad_clip=0.3)
    for key, value in meta.inner.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs across ranks"
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ real stages, Lightning
def _meta_cfg(tiny_data, run_root, experiment="meta_warp_tiny.yaml", *extra):
    from mp_lightning.config.compose import compose

    return compose(EXPERIMENTS / "metaportrait" / experiment, tiny_overrides(
        tiny_data, run_root, "data.mode=identity_tasks", "data.support_frames=1", "data.query_frames=1",
        "data.augment_flip=false", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "trainer.limit_train_batches=2", "trainer.max_steps=-1",
        "callbacks.metrics=false", *extra))


def test_schema_types_inner_by_the_inner_stage():
    from mp_lightning.config.compose import compose
    from mp_lightning.errors import ConfigError

    cfg = compose(EXPERIMENTS / "metaportrait" / "meta.yaml", [])
    assert cfg.model.inner.optim.lr == 2e-4 and cfg.model.inner.losses.eye == 50.0  # refine defaults filled in
    assert cfg.model.outer_rule == "official_adam" and cfg.model.remove_spectral_norm is True
    with pytest.raises(ConfigError):
        compose(EXPERIMENTS / "metaportrait" / "meta.yaml", ["model.inner.losses.not_a_key=1"])
    with pytest.raises(ConfigError):
        compose(EXPERIMENTS / "metaportrait" / "meta.yaml", ["model.inner_stage=nope"])


@pytest.mark.slow
def test_resume_matches_uninterrupted(tiny_data, tmp_path):
    """Through Lightning: 2 epochs straight == 1 epoch, checkpoint, resume for the 2nd (fixed task batches,
    so that only the module's own state, the outer Adam state and the progress decide the result)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mp_lightning.runs.training import build_datamodule, build_stage

    cfg = _meta_cfg(tiny_data, tmp_path, "meta_warp_tiny.yaml", "name=resume", "data.batch_size=1",
                    "model.inner.perceptual.scales=[1.0]")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    torch.manual_seed(0)
    batches = [next(iter(dm.train_dataloader()))]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    def fit(name, epochs, ckpt=None):
        torch.manual_seed(0)
        stage = build_stage(cfg, dm)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False,
                            callbacks=[ModelCheckpoint(dirpath=str(tmp_path / name), save_last=True)])
        trainer.fit(stage, train_dataloaders=loader, ckpt_path=ckpt)
        return trainer, stage

    full_trainer, full = fit("full", 2)
    fit("cut", 1)
    cut_ckpt = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)
    assert cut_ckpt["optimizer_states"][0]["state"], "the outer Adam state is checkpointed"
    resumed_trainer, resumed = fit("cut2", 2, ckpt=str(tmp_path / "cut" / "last.ckpt"))
    assert full_trainer.global_step == resumed_trainer.global_step == 2
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)
    sa = full_trainer.optimizers[0].state_dict()["state"]
    sb = resumed_trainer.optimizers[0].state_dict()["state"]
    for k in sa:
        torch.testing.assert_close(sb[k]["exp_avg"], sa[k]["exp_avg"], rtol=1e-4, atol=1e-8)
        assert int(sb[k]["step"]) == int(sa[k]["step"]) == 2
    # and the resumed weights differ from the 1-epoch ones (the 2nd outer step happened)
    one = {k[len("inner."):]: v for k, v in cut_ckpt["state_dict"].items()}
    assert any(not torch.equal(one[k], v) for k, v in resumed.inner.state_dict().items())


@pytest.mark.slow
def test_refine_meta_fast_dev_run_and_validation(tiny_data, tmp_path):
    """The refinement stage meta-trains; validation delegates to it; weights change; remove_sn works."""
    from mp_lightning.stages.base import load_stage
    from mp_lightning.runs.training import run_training

    result = run_training(_meta_cfg(tiny_data, tmp_path, "meta_tiny.yaml", "name=refine", "trainer.max_epochs=1",
                                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "data.batch_size=1",
                                    "model.inner.perceptual.scales=[1.0]",
                                    "model.remove_spectral_norm=true", "trainer.check_val_every_n_epoch=1",
                                    "callbacks.metrics=true"))
    assert result["global_step"] == 1
    assert math.isfinite(result["metrics"]["train/inner_loss"])
    assert "val/l1" in result["metrics"]
    meta = load_stage(result["last_checkpoint"])
    assert not any(k.endswith("weight_orig") and "generator" in k and "equal" not in k
                   for k in meta.state_dict() if "_u" in k)
    assert not any(k.endswith("weight_u") for k in meta.state_dict())


@pytest.mark.slow
def test_fomm_inner_stage_adapts(tiny_data):
    """The FOMM baseline works as the inner stage (its loss without the GAN terms falls)."""
    from mp_lightning.config.compose import compose
    from mp_lightning.stages.fomm import FOMMStage
    from mp_lightning.reptile import adaptation_groups

    fomm_tiny = EXPERIMENTS / "baselines" / "fomm_tiny.yaml"
    if not fomm_tiny.is_file():
        pytest.skip("no tiny FOMM experiment")
    torch.manual_seed(0)
    cfg = compose(fomm_tiny, tiny_overrides(tiny_data, tiny_data / "runs"))
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    meta_cfg = {"stage": "meta", "model": {"inner_stage": "fomm", "inner": model, "inner_steps": 3, "inner_lr": 1e-3}}
    meta = MetaLearningModule(meta_cfg)
    assert isinstance(meta.inner, FOMMStage)
    batch = toy_batch_images(2, cfg.data.image_size)
    groups = adaptation_groups(meta.inner, 0.1)
    r = meta.inner_loop(batch)
    assert all(torch.isfinite(d).all() for d in r["delta_sum"]) and any(d.abs().sum() > 0 for d in r["delta_sum"])
    assert len(r["losses"]) == 2 * 3 and groups


def toy_batch_images(num_tasks: int, size: int) -> dict:
    batch = toy_tasks(num_tasks, support=1)
    g = torch.Generator().manual_seed(1)
    batch["source"] = torch.rand(num_tasks, 3, size, size, generator=g)
    batch["support_driving"] = torch.rand(num_tasks, 1, 3, size, size, generator=g)
    batch["query_driving"] = batch["support_driving"]
    return batch


class ToyBufferStage(ToyStage):
    """ToyStage followed by a spectral-normed 1x1 conv and a BatchNorm: forward passes in training mode move
    their buffers (the power-iteration vector u changes the normalised weight, hence the next task's loss)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.utils.spectral_norm(nn.Conv2d(3, 3, 1).double())
        self.norm = nn.BatchNorm2d(3).double()

    def forward(self, batch):
        return {"prediction": self.norm(self.conv(super().forward(batch)["prediction"]))}

    def adaptation_param_groups(self, warp_lr_multiplier):
        return [{"params": [self.w, self.b, self.conv.weight_orig], "mult": 1.0, "name": "toy"}]


def _buffers(module):
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def test_buffers_restored_after_each_task():
    import copy

    meta = MetaLearningModule({"stage": "meta", "model": {"inner_stage": "warp", "inner_steps": 2, "inner_lr": 0.05,
                                                          "grad_clip": 0.0}}, inner=ToyBufferStage())
    start = copy.deepcopy(meta)
    before = _buffers(meta.inner)
    batch = toy_tasks(3)
    result = meta.inner_loop(batch)
    for key, value in _buffers(meta.inner).items():
        assert torch.equal(value, before[key]), key
    # every task starts from phi *and* the initial buffers: the sum equals each task run alone from the start
    alone = []
    for i in range(3):
        one = copy.deepcopy(start)
        alone.append(one.inner_loop({k: v[i:i + 1] for k, v in batch.items()})["delta_sum"])
    for j, total in enumerate(result["delta_sum"]):
        torch.testing.assert_close(total, sum(a[j] for a in alone), rtol=1e-10, atol=1e-12)
    assert not torch.equal(before["conv.weight_u"], _forward_once(start))  # control: forward does move u


def _forward_once(meta) -> torch.Tensor:
    meta.inner.train()
    meta.inner({"source": torch.rand(2, 3, 4, 4, dtype=torch.float64)})
    return meta.inner.conv.weight_u.detach().clone()


def test_adapted_validation_scores_the_query_after_inner_steps_and_restores_the_start():
    import copy

    meta = MetaLearningModule({"stage": "meta", "model": {"inner_stage": "warp", "inner_steps": 2, "inner_lr": 0.05,
                                                          "grad_clip": 0.0}}, inner=ToyBufferStage())
    batch = toy_tasks(2, support=3, seed=1)
    batch["query_driving"] = torch.rand_like(batch["support_driving"])
    params = {k: v.detach().clone() for k, v in meta.inner.named_parameters()}
    buffers = _buffers(meta.inner)
    expected = []
    for t in range(2):  # by hand: a copy adapted on the support as the inner loop does, then the query in eval mode
        one = copy.deepcopy(meta.inner)
        one.train()
        opt = torch.optim.Adam([one.w, one.b, one.conv.weight_orig], lr=0.05, betas=(0.5, 0.999))
        from mp_lightning.batch import task_pairs

        for _ in range(3):
            loss = one.adaptation_loss(task_pairs(batch, t, "support"))
            opt.zero_grad()
            loss.backward()
            opt.step()
        one.eval()
        with torch.no_grad():
            expected.append(one(task_pairs(batch, t, "query"))["prediction"])
    meta.eval()
    with torch.inference_mode():  # as Lightning's validation loop runs it
        adapted = meta.adapted_query_predictions(batch, steps=3)
        zero_shot = meta(batch)["prediction"]
    torch.testing.assert_close(adapted, torch.cat(expected), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(adapted, zero_shot)
    for k, v in meta.inner.named_parameters():
        assert torch.equal(v.detach(), params[k]), k
    for k, v in _buffers(meta.inner).items():
        assert torch.equal(v, buffers[k]), k
    assert not meta.inner.training


def test_inner_gradients_nan_to_num_limit_is_the_config_value(monkeypatch):
    import mp_lightning.reptile as reptile

    seen = []
    real = reptile.clean_and_clip_
    monkeypatch.setattr(reptile, "clean_and_clip_", lambda params, clip, limit=1e5: seen.append(limit) or
                        real(params, clip, limit))
    meta = toy_meta("official_adam", inner_steps=2, inner_lr=0.05, nan_to_num=7.0)
    meta.inner_loop(toy_tasks(1))
    assert seen == [7.0, 7.0]


@pytest.mark.slow
def test_meta_training_logs_adapted_validation_and_steps_the_lr_per_step(tiny_data, tmp_path):
    from mp_lightning.state_dicts import read_checkpoint
    from mp_lightning.runs.training import run_training

    result = run_training(_meta_cfg(tiny_data, tmp_path, "meta_warp_tiny.yaml", "name=adapted", "data.batch_size=1",
                                    "model.inner.perceptual.scales=[1.0]", "trainer.limit_train_batches=2",
                                    "trainer.max_steps=2", "trainer.limit_val_batches=1",
                                    "trainer.check_val_every_n_epoch=1", "callbacks.metrics=true",
                                    "data.task_unit=clip", "model.lr_interval=step", "model.lr_milestones=[1]",
                                    "model.outer_lr=1e-3", "model.lr_gamma=0.5", "callbacks.media.enabled=false"))
    metrics = result["metrics"]
    for key in ("val/l1", "val/psnr", "val/adapted/l1", "val/adapted/psnr"):  # lpips is *_random offline
        assert key in metrics and math.isfinite(metrics[key]), (key, sorted(metrics))
    assert metrics["val/adapted/l1"] != metrics["val/l1"]
    ckpt = read_checkpoint(result["last_checkpoint"], weights_only=False)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2  # stepped after each of the 2 outer steps
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5)
