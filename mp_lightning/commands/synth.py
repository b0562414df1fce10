"""`mp-lightning synth OUT ...`: write a synthetic VoxCeleb-style dataset (H.264 clips + landmarks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

NAME = "synth"
HELP = "write a synthetic VoxCeleb-style dataset: H.264 talking-head clips with exact dense landmarks"


@dataclass
class SynthSettings:
    """The arguments of `datamodules.write_synthetic_dataset` the command takes, with the command's defaults
    (a bigger dataset than the function's test-sized ones)."""

    identities: int = field(default=20, metadata={"help": "number of people"})
    videos_per_identity: int = field(default=2, metadata={"help": "videos per person"})
    clips_per_video: int = field(default=2, metadata={"help": "clips per video"})
    frames: int = field(default=64, metadata={"help": "frames per clip"})
    size: int = field(default=128, metadata={"help": "frame width = height in pixels, even"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed, same data"})
    layout: str = field(default="vox", metadata={
        "choices": ("vox", "vox-png"),
        "help": "vox: <split>/<id>/<video>/<clip>.mp4; vox-png: FOMM's <split>/<id>#<video>#<clip>/<frame>.png"})
    test_fraction: float = field(default=0.2, metadata={"help": "fraction of identities in test/"})
    workers: Optional[int] = field(default=None, metadata={"help": "parallel processes (default: one per CPU)"})
    personal_details: bool = field(default=False, metadata={
        "help": "people carry teeth, a side mark and an earring that a frontal, closed-mouth first frame hides "
                "(for the personalization benchmark)"})
    gop: Optional[int] = field(default=None, metadata={
        "help": "keyframe interval of the mp4 clips (default: the writer's, 8)"})


def add_arguments(parser) -> None:
    from mp_lightning.commands.flags import add_dataclass_flags

    parser.add_argument("out", help="output folder (created); gets {train,test}/ and landmarks.json")
    add_dataclass_flags(parser, SynthSettings)


def run(args) -> int:
    from dataclasses import asdict

    from datamodules.synthetic import write_synthetic_dataset
    from mp_lightning.commands.flags import settings_from_args

    settings = asdict(settings_from_args(SynthSettings, args))
    if not settings["gop"]:  # None (and 0, as before): the writer's keyframe interval
        del settings["gop"]
    summary = write_synthetic_dataset(args.out, **settings)
    print(
        f"wrote {len(summary['clips'])} clips ({summary['train_identities']} train / {summary['test_identities']} test"
        f" identities, {summary['num_points']} landmarks) to {summary['root']} in {summary['seconds']:.1f} s"
    )
    return 0
