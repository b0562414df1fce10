"""`mp-lightning synth OUT ...`: write a synthetic VoxCeleb-style dataset (H.264 clips + landmarks)."""
from __future__ import annotations

NAME = "synth"
HELP = "write a synthetic VoxCeleb-style dataset: H.264 talking-head clips with exact dense landmarks"


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output folder (created); gets {train,test}/ and landmarks.json")
    parser.add_argument("--identities", type=int, default=20, help="number of people (default 20)")
    parser.add_argument("--videos-per-identity", type=int, default=2, help="videos per person (default 2)")
    parser.add_argument("--clips-per-video", type=int, default=2, help="clips per video (default 2)")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    parser.add_argument("--size", type=int, default=128, help="frame width = height in pixels, even (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default 0)")
    parser.add_argument(
        "--layout",
        choices=("vox", "vox-png"),
        default="vox",
        help="vox: <split>/<id>/<video>/<clip>.mp4; vox-png: FOMM's <split>/<id>#<video>#<clip>/<frame>.png",
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="fraction of identities in test/ (default 0.2)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per CPU)")
    parser.add_argument("--personal-details", action="store_true",
                        help="people carry teeth, a side mark and an earring that a frontal, closed-mouth first frame "
                             "hides (for the personalization benchmark)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval of the mp4 clips (default 8)")


def run(args) -> int:
    from datamodules.synthetic import DEFAULT_GOP, write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        identities=args.identities,
        videos_per_identity=args.videos_per_identity,
        clips_per_video=args.clips_per_video,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        layout=args.layout,
        test_fraction=args.test_fraction,
        workers=args.workers,
        gop=args.gop or DEFAULT_GOP,
        personal_details=args.personal_details,
    )
    print(
        f"wrote {len(summary['clips'])} clips ({summary['train_identities']} train / {summary['test_identities']} test"
        f" identities, {summary['num_points']} landmarks) to {summary['root']} in {summary['seconds']:.1f} s"
    )
    return 0
