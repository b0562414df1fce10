"""`mp-lightning personalize --checkpoint X --video PERSON.mp4 --seconds S --steps K`: fast personalization."""
from __future__ import annotations

NAME = "personalize"
HELP = "fine-tune a checkpoint on the first seconds of one person's clip and plot the held-out metrics per step"


def add_arguments(parser) -> None:
    from mp_lightning.commands.flags import add_dataclass_flags
    from mp_lightning.runs.personalize import PersonalizationRecipe, PersonalizationSettings

    parser.add_argument("--checkpoint", required=True, help="any mp-lightning stage checkpoint (a meta one: its inner stage)")
    parser.add_argument("--video", required=True, help="the person's clip (.mp4) with <clip>.landmarks.npy beside it")
    parser.add_argument("--seconds", type=float, required=True, help="train on this many seconds from the start")
    parser.add_argument("--steps", type=int, required=True, help="fine-tuning steps K")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also evaluate every N steps (always at 0, 1, 2, 5, 10, 20, 50, ... and K)")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/personalized_<video>)")
    add_dataclass_flags(parser.add_argument_group("recipe (PersonalizationRecipe, chosen by measurement)"),
                        PersonalizationRecipe)
    add_dataclass_flags(parser, PersonalizationSettings)
    parser.add_argument("--source-identity", default=None,
                        help="precomputed identity (.npy) for checkpoints that condition on one (the official weights); "
                             "default: VIDEO.identity.npy beside the clip when present")


def run(args) -> int:
    from mp_lightning.preprocess.inputs import resolve_device

    from pathlib import Path

    from mp_lightning.commands.flags import settings_from_args
    from mp_lightning.errors import UserFacingError
    from mp_lightning.runs.personalize import PersonalizationRecipe, PersonalizationSettings, personalize
    from mp_lightning.stages.base import load_stage

    if args.steps < 0:
        raise UserFacingError("--steps must be >= 0")
    settings = settings_from_args(PersonalizationSettings, args)
    stage = load_stage(args.checkpoint, map_location=resolve_device(settings.device), eval_mode=False).unwrapped()
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"personalized_{Path(args.video).stem}"
    curve = personalize(
        stage, args.video, args.seconds, args.steps, out, eval_every=args.eval_every,
        recipe=settings_from_args(PersonalizationRecipe, args), max_eval_frames=settings.max_eval_frames,
        lpips_pretrained=settings.lpips_pretrained, identity_pretrained=settings.identity_pretrained,
        seed=settings.seed, source_identity=args.source_identity,
    )
    for reason in curve["skipped_metrics"].values():
        print(reason)
    first = {k: round(v[0], 4) for k, v in curve["metrics"].items()}
    last = {k: round(v[-1], 4) for k, v in curve["metrics"].items()}
    print(f"step 0: {first}\nstep {curve['steps'][-1]}: {last}")
    print(f"wrote {curve['checkpoint']}, {out / 'curve.json'}, {curve['plot']}")
    return 0
