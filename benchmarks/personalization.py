"""Reptile cost and the meta-versus-standard initialization experiment (issue 6), at tiny scale.

    python benchmarks/personalization.py overhead [--config experiments/metaportrait/meta_warp_tiny.yaml]
    python benchmarks/personalization.py memory
    python benchmarks/personalization.py experiment --config experiments/paper/personalization_tiny_meta.yaml

overhead: one outer step (inner loops + Reptile bookkeeping) against the N inner steps it contains,
  and the bookkeeping (snapshot, difference accumulation, restore, outer update) timed on its own.
memory: peak RSS of a child process doing meta steps versus plain training steps of the same stage.
experiment: pre-train a standard and a Reptile initialization from the same start with the same number
  of inner-step-equivalents, personalize both on held-out identities and report mean +- std curves.
Results go to benchmarks/results/personalization_*.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"


def _setup(config: str, data_root: Path, overrides: list[str]):
    from datamodules import write_synthetic_dataset
    from mp_lightning.config.compose import compose
    from mp_lightning.runs.training import build_datamodule, build_stage

    if not (data_root / "landmarks.json").is_file():
        write_synthetic_dataset(data_root, identities=12, videos_per_identity=1, clips_per_video=1, frames=24, size=64,
                                seed=0, test_fraction=0.7, workers=0)
    cfg = compose(Path(config), [f"data.root={data_root}", "logger.type=none", "data.num_workers=0", *overrides])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    meta = build_stage(cfg, dm)
    batch = next(iter(dm.train_dataloader()))
    return cfg, dm, meta, batch


def overhead(args) -> dict:
    from mp_lightning.reptile import adapt, make_inner_optimizer, outer_update

    torch.manual_seed(0)
    cfg, dm, meta, batch = _setup(args.config, Path(args.data), args.override)
    hp = meta.hp
    opt_outer = meta.configure_optimizers()["optimizer"]
    from mp_lightning.batch import task_pairs

    num_tasks = batch["source"].shape[0]
    tasks = [task_pairs(batch, t, "support") for t in range(num_tasks)]
    rows = []
    for rep in range(args.repeats):
        groups = meta.meta_groups()
        params = [p for g in groups for p in g["params"]]
        # plain: the same inner steps without any Reptile bookkeeping
        t0 = time.perf_counter()
        for support in tasks:
            opt = make_inner_optimizer(groups, hp.inner_lr, hp.inner_betas)
            adapt(meta.inner, support, hp.inner_steps, opt, params, hp.grad_clip)
        plain = time.perf_counter() - t0
        # bookkeeping alone: snapshot, accumulate + restore per task, outer update
        t0 = time.perf_counter()
        with torch.no_grad():
            phi = [p.detach().clone() for p in params]
            delta = [torch.zeros_like(p) for p in params]
            for _ in tasks:
                for p, p0, d in zip(params, phi, delta):
                    d.add_(p.detach() - p0)
                    p.copy_(p0)
        outer_update(params, delta, num_tasks, opt_outer, grad_clip=hp.grad_clip)
        book = time.perf_counter() - t0
        # the whole outer step as training runs it
        t0 = time.perf_counter()
        r = meta.inner_loop(batch)
        outer_update(r["params"], r["delta_sum"], r["num_tasks"], opt_outer, grad_clip=hp.grad_clip)
        full = time.perf_counter() - t0
        rows.append({"inner_steps_s": plain, "bookkeeping_s": book, "outer_step_s": full})
        print(rows[-1], flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    n_params = sum(p.numel() for p in meta.meta_parameters())
    result = {
        "config": args.config, "tasks_per_outer_step": num_tasks, "inner_steps": hp.inner_steps,
        "meta_parameters": n_params, "repeats": rows, "median": med,
        "bookkeeping_fraction": med["bookkeeping_s"] / med["inner_steps_s"],
        "outer_step_over_inner_steps": med["outer_step_s"] / med["inner_steps_s"] - 1.0,
        "threads": torch.get_num_threads(),
    }
    return result


def _memory_child(args) -> None:
    from mp_lightning.reptile import adapt, make_inner_optimizer, outer_update

    torch.manual_seed(0)
    cfg, dm, meta, batch = _setup(args.config, Path(args.data), args.override)
    hp = meta.hp
    from mp_lightning.batch import task_pairs

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.mode == "plain":
        groups = meta.meta_groups()
        params = [p for g in groups for p in g["params"]]
        opt = make_inner_optimizer(groups, hp.inner_lr, hp.inner_betas)
        for _ in range(args.steps):
            for t in range(batch["source"].shape[0]):
                adapt(meta.inner, task_pairs(batch, t, "support"), hp.inner_steps, opt, params, hp.grad_clip)
    else:
        opt_outer = meta.configure_optimizers()["optimizer"]
        for _ in range(args.steps):
            r = meta.inner_loop(batch)
            outer_update(r["params"], r["delta_sum"], r["num_tasks"], opt_outer, grad_clip=hp.grad_clip)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_bytes = sum(p.numel() * p.element_size() for p in meta.meta_parameters())
    print(json.dumps({"mode": args.mode, "peak_rss_mb": peak / 1024, "rss_before_training_mb": base / 1024,
                      "meta_parameter_mb": n_bytes / 2**20}))


def memory(args) -> dict:
    out = {}
    for mode in ("plain", "meta"):
        cmd = [sys.executable, __file__, "_memory_child", "--mode", mode, "--config", args.config, "--data", args.data,
               "--steps", str(args.steps)] + [x for o in args.override for x in ("--override", o)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out[mode] = json.loads(line)
        print(out[mode], flush=True)
    out["meta_minus_plain_mb"] = out["meta"]["peak_rss_mb"] - out["plain"]["peak_rss_mb"]
    out["expected_extra_mb"] = 2 * out["meta"]["meta_parameter_mb"]  # snapshot + difference sum
    return out


def experiment(args) -> dict:
    """Standard vs Reptile initialization from one start, same inner-step budget; personalize on held-out ids."""
    import copy

    from mp_lightning.runs.personalize import PersonalizationRecipe, personalize
    from mp_lightning.reptile import adapt, make_inner_optimizer, outer_update

    torch.manual_seed(0)
    cfg, dm, meta, _ = _setup(args.config, Path(args.data), args.override)
    outer_steps, pers_steps, seconds = args.outer_steps, args.personalize_steps, args.seconds
    pers_lr = args.personalize_lr or meta.hp.inner_lr
    start = copy.deepcopy(meta.inner.state_dict())
    hp = meta.hp
    loader = dm.train_dataloader()

    def batches():
        while True:
            yield from loader

    # Reptile
    opt_outer = meta.configure_optimizers()["optimizer"]
    it = batches()
    budget = 0
    for _ in range(outer_steps):
        batch = next(it)
        r = meta.inner_loop(batch)
        outer_update(r["params"], r["delta_sum"], r["num_tasks"], opt_outer, grad_clip=hp.grad_clip)
        budget += r["num_tasks"] * hp.inner_steps
    meta_state = copy.deepcopy(meta.inner.state_dict())
    # standard: the same number of steps of plain Adam on the same kind of pairs
    meta.inner.load_state_dict(start)
    from mp_lightning.batch import task_pairs

    groups = meta.meta_groups()
    params = [p for g in groups for p in g["params"]]
    # standard training uses the inner (ordinary training) learning rate
    opt = make_inner_optimizer(groups, hp.inner_lr, hp.inner_betas)
    it = batches()
    done = 0
    while done < budget:
        batch = next(it)
        for t in range(batch["source"].shape[0]):
            adapt(meta.inner, task_pairs(batch, t, "support"), 1, opt, params, hp.grad_clip)
            done += 1
    standard_state = copy.deepcopy(meta.inner.state_dict())

    videos = sorted((Path(args.data) / "test").rglob("*.mp4"))[: args.identities]
    curves = {"meta": [], "standard": []}
    for name, state in (("meta", meta_state), ("standard", standard_state)):
        for v in videos:
            meta.inner.load_state_dict(state)
            c = personalize(meta.inner, v, seconds, pers_steps, Path(args.work) / name / v.stem,
                            recipe=PersonalizationRecipe(lr=pers_lr),
                            lpips_pretrained=False, identity_pretrained=False, identity=False, progress=False,
                            write_checkpoint=False, max_eval_frames=8)
            curves[name].append(c)
    summary = {}
    for name, cs in curves.items():
        summary[name] = {"steps": cs[0]["steps"]}
        for metric in cs[0]["metrics"]:
            vals = torch.tensor([c["metrics"][metric] for c in cs])
            summary[name][metric] = {"mean": vals.mean(0).tolist(), "std": vals.std(0).tolist()}
    return {"budget_inner_steps": budget, "outer_steps": outer_steps, "identities": len(videos), "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("overhead", "memory", "experiment", "_memory_child"))
    p.add_argument("--config", default=str(REPO / "experiments" / "metaportrait" / "meta_warp_tiny.yaml"))
    p.add_argument("--data", default="/tmp/mp_bench_personalization_data")
    p.add_argument("--work", default="/tmp/mp_bench_personalization_runs")
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--mode", default="meta")
    p.add_argument("--outer-steps", type=int, default=20, help="experiment: Reptile outer steps (sets the budget)")
    p.add_argument("--personalize-steps", type=int, default=50)
    p.add_argument("--seconds", type=float, default=0.5, help="experiment: seconds of each held-out clip to train on")
    p.add_argument("--personalize-lr", type=float, default=None, help="default: the inner lr")
    p.add_argument("--identities", type=int, default=8, help="held-out identities personalized")
    args = p.parse_args()
    if args.what == "_memory_child":
        _memory_child(args)
        return
    result = {"overhead": overhead, "memory": memory, "experiment": experiment}[args.what](args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"personalization_{args.what}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "repeats"}, indent=1))


if __name__ == "__main__":
    main()
