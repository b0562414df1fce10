NAME = "quickstart"
HELP = "Make a small synthetic dataset, train and evaluate the tiny warp stage on CPU, write an animation"


def add_arguments(parser):
    parser.add_argument("--data", default="data/quickstart", help="where to write the synthetic dataset")
    parser.add_argument("--name", default="quickstart", help="run name (run directory runs/NAME)")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--minutes", type=float, default=4.0, help="stop training after this long (resumable)")
    parser.add_argument("--experiment", default=None, help="experiment file (default experiments/metaportrait/warp_tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the experiment")


def run(args) -> int:
    import time
    from pathlib import Path

    from datamodules import write_synthetic_dataset
    from mp_lightning.config.compose import compose
    from mp_lightning.io.paths import experiments_dir
    from mp_lightning.runs.training import run_evaluation, run_training

    t0 = time.time()
    data = Path(args.data)
    if (data / "landmarks.json").is_file():
        print(f"[1/4] synthetic data: reusing {data}")
    else:
        print(f"[1/4] synthetic data: writing {data}")
        write_synthetic_dataset(data, identities=12, videos_per_identity=2, clips_per_video=2, frames=48,
                                size=128, seed=0, test_fraction=0.25)
    experiment = args.experiment or str(experiments_dir() / "metaportrait" / "warp_tiny.yaml")
    minutes = int(args.minutes)
    seconds = int((args.minutes - minutes) * 60)
    overrides = [
        f"name={args.name}", f"data.root={data}", f"trainer.max_steps={args.steps}",
        f"trainer.max_time='00:00:{minutes:02d}:{seconds:02d}'", "trainer.accelerator=cpu", "trainer.devices=1",
        *args.overrides,
    ]
    cfg = compose(experiment, overrides)
    print(f"[2/4] training {cfg.stage} stage ({experiment}) for up to {args.steps} steps / {args.minutes} min")
    trained = run_training(cfg)
    print(f"[3/4] evaluating {trained['last_checkpoint']}")
    eval_cfg = compose(experiment, [*overrides, f"ckpt_path={trained['last_checkpoint']}"])
    evaluated = run_evaluation(eval_cfg)
    for key, value in evaluated["metrics"].items():
        print(f"    {key:28s} {value:.4f}")
    print("[4/4] animating a test clip")
    from mp_lightning.commands.animate import run as animate

    test_clips = sorted((data / "test").rglob("*.mp4"))
    source_clip, driving_clip = test_clips[0], test_clips[-1]
    out = Path(trained["run_dir"]) / "animation.mp4"

    class _Args:  # the animate command's arguments
        checkpoint = trained["last_checkpoint"]
        source, source_frame, driving = str(source_clip), 0, str(source_clip)
        side_by_side, max_frames, batch_size, fps, device, sr_checkpoint, relative = True, None, 8, 25, "cpu", None, True

    _Args.out = str(out)
    animate(_Args)
    print(f"done in {time.time() - t0:.0f} s: run directory {trained['run_dir']}, metrics {evaluated['eval_dir']}/metrics.md, "
          f"animation {out} (source {source_clip.name} driven by itself; try --driving {driving_clip})")
    return 0
