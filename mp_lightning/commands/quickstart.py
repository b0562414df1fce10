NAME = "quickstart"
HELP = ("Make a small synthetic dataset, train and evaluate the tiny warp stage on CPU, then animate a test "
        "portrait driven by its own and by another identity's clip")


def add_arguments(parser):
    parser.add_argument("--data", default="data/quickstart", help="where to write the synthetic dataset")
    parser.add_argument("--name", default="quickstart", help="run name (run directory runs/NAME)")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--minutes", type=float, default=4.0, help="stop training after this long (resumable)")
    parser.add_argument("--experiment", default=None, help="experiment file (default experiments/metaportrait/warp_quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the experiment")


def ensure_quickstart_data(data):
    """The quickstart's synthetic dataset at `data` (written once; reused when its landmarks.json exists)."""
    from datamodules import write_synthetic_dataset

    if (data / "landmarks.json").is_file():
        print(f"[1/4] synthetic data: reusing {data}")
    else:
        print(f"[1/4] synthetic data: writing {data}")
        write_synthetic_dataset(data, identities=12, videos_per_identity=2, clips_per_video=2, frames=48,
                                size=128, seed=0, test_fraction=0.25)
    return data


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from mp_lightning.config.compose import compose
    from mp_lightning.io.paths import experiments_dir
    from mp_lightning.runs.reenactment_report import reenact_test_portraits
    from mp_lightning.stages.base import load_stage
    from mp_lightning.runs.training import run_evaluation, run_training

    t0 = time.time()
    data = ensure_quickstart_data(Path(args.data))
    experiment = args.experiment or str(experiments_dir() / "metaportrait" / "warp_quickstart.yaml")
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
    print(f"[3/4] evaluating {trained['last_checkpoint']} on the test split (self-reenactment and cross-identity)")
    eval_cfg = compose(experiment, [*overrides, f"ckpt_path={trained['last_checkpoint']}"])
    evaluated = run_evaluation(eval_cfg)
    for key, value in evaluated["metrics"].items():
        print(f"    {key:34s} {value:.4f}")
    for reason in evaluated.get("skipped", {}).values():
        print(f"    {reason}")
    print("[4/4] animating a test portrait driven by its own clip and by another test identity's clip")
    stage = load_stage(trained["last_checkpoint"], map_location="cpu")
    report = reenact_test_portraits(stage, data, trained["run_dir"])
    print(f"    source portrait        {report['source']}")
    for name, title in (("self", "self-reenactment"), ("cross", "cross-identity")):
        print(f"    {title:22s} driving {report[name]['driving']}")
        print(f"    {'':22s} video   {report[name]['video']}  (source | driving | prediction)")
        for key, value in report["metrics"][name].items():
            print(f"    {'':22s} {key:28s} {value:.4f}")
    print(f"    grid                   {report['grid']}")
    for reason in report["skipped"].values():
        print(f"    {reason}")
    if "test_pairs" in report:
        # one portrait is an anecdote: the comparison with copying the source frame over every test pair
        pairs = report["test_pairs"]
        print(f"    test pairs ({pairs['pairs']}), ST-LPIPS, lower is better: prediction vs copy the source frame")
        for region, key in (("whole frame", "st_lpips"), ("face (landmark hull)", "st_lpips_face")):
            ours, copy = pairs[key], pairs[f"{key}_copy_source"]
            print(f"    {region:22s} {ours:.4f} vs {copy:.4f} ({100 * (copy - ours) / copy:+.0f}%)")
    if "identity_check" in report:
        # the scale id_similarity_dlib is read on: dlib's similarity of one person's frames and of two people's
        check = report["identity_check"]
        print(f"    identity check, dlib on the test split ({check['faces']:.0f} faces of {check['people']:.0f} people):"
              f" cosine similarity, distance")
        for label, key in (("same person (self)", "same"), ("two people (cross)", "other")):
            print(f"    {label:22s} {check[f'cosine_{key}']:.4f} +- {check[f'cosine_{key}_std']:.4f}, "
                  f"{check[f'distance_{key}']:.3f} ({check[f'{key}_pairs']:.0f} pairs)")
        print(f"    {'told apart':22s} ROC AUC {check['cosine_auc']:.3f} by cosine, {check['distance_auc']:.3f} by distance")
    summary = Path(trained["run_dir"]) / "quickstart_report.json"
    summary.write_text(json.dumps(report, indent=2))
    print(f"    report                 {summary}")
    print(f"done in {time.time() - t0:.0f} s: run directory {trained['run_dir']}, metrics {evaluated['eval_dir']}/metrics.md")
    return 0
