NAME = "eval"
HELP = "Evaluate a checkpoint on the test split (self-reenactment and cross-identity): mp-lightning eval EXP.yaml ckpt_path=X.ckpt [key=value ...]"


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment YAML file (data and metrics settings)")
    parser.add_argument("overrides", nargs="*", help="overlay YAML files and key=value overrides; ckpt_path=X.ckpt is "
                        "required. The model is built from the checkpoint's saved config; model.key=value given here "
                        "is set over it (e.g. model.retarget_landmarks=false)")
    parser.add_argument("--sets", default="self,cross", help="evaluation sets, comma separated: self, cross")


def run(args) -> int:
    from mp_lightning.config.compose import compose, model_overrides_of, split_cli_args
    from mp_lightning.runs.training import run_evaluation

    overlays, overrides = split_cli_args(args.overrides)
    cfg = compose(args.experiment, overrides, overlays)
    # the model is the checkpoint's: only the model keys given here change it (an inference option, say)
    result = run_evaluation(cfg, sets=tuple(s for s in args.sets.split(",") if s),
                            model_overrides=model_overrides_of(overrides))
    for key, value in result["metrics"].items():
        print(f"{key:32s} {value:.4f}")
    print(f"wrote {result['eval_dir']}/metrics.json and metrics.md")
    return 0
