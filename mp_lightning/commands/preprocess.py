"""`mp-lightning preprocess RAW OUT`: raw talking-head videos -> clips, landmarks, identity embeddings.

    mp-lightning preprocess raw/ data/mine                      # RAW/<identity>/.../<video>.mp4
    mp-lightning preprocess raw/ data/mine --identity-map ids.csv --workers 2 --landmarks mediapipe68
    mp-lightning preprocess raw/ data/mine --smooth-landmarks   # Savitzky-Golay over time
    mp-lightning preprocess raw/ data/mine --semantics mediapipe  # + PIRender motion descriptors (stand-in)

Writes OUT/{train,test}/<identity>/<video>/<clip>.mp4 with <clip>.landmarks.npy (and <clip>.identity.npy
when the VGGFace2 weights are present), OUT/landmarks.json and OUT/preprocess_report.json. Run it again
after an interruption: finished videos are skipped.
"""
from __future__ import annotations

NAME = "preprocess"
HELP = "turn raw videos into training data: face tracks, square crops, dense landmarks, identity embeddings"


def add_arguments(parser) -> None:
    from mp_lightning.commands.flags import add_dataclass_flags
    from mp_lightning.preprocess.pipeline import Settings

    parser.add_argument("raw", help="folder of raw videos (.mp4 .mov .avi .mkv .webm), RAW/<identity>/.../<video>.mp4")
    parser.add_argument("out", help="output dataset root (created); rerun with the same OUT to resume")
    add_dataclass_flags(parser, Settings)
    parser.add_argument("--workers", type=int, default=1, help="parallel processes, one video each (default 1)")
    parser.add_argument("--identity-map", metavar="CSV", default=None,
                        help="CSV with header video,identity[,split] (video: path relative to RAW or file name)")
    parser.add_argument("--semantics", choices=("none", "mediapipe"), default="none",
                        help="also write <clip>.semantics.npy motion descriptors (PIRender's input): mediapipe = a 73-d "
                             "stand-in for Deep3DFaceRecon from the 3D face mesh (see mp_lightning.preprocess.semantics)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mp_lightning.commands.flags import settings_from_args
    from mp_lightning.preprocess.pipeline import REPORT_NAME, Settings, preprocess_dataset

    settings = settings_from_args(Settings, args)
    report = preprocess_dataset(
        args.raw, args.out, settings, workers=args.workers, identity_map=args.identity_map, progress=not args.no_progress
    )
    t = report["totals"]
    print(
        f"{t['clips']} clips ({t['clip_frames']} frames) from {t['videos_with_clips']}/{t['videos']} videos "
        f"({t['resumed']} already done) in {args.out}; landmarks: {report['landmarks']}; "
        f"identity embeddings: {report['identity_embeddings']}"
    )
    if t["dropped"]:
        print("dropped: " + ", ".join(f"{k} x{v}" for k, v in sorted(t["dropped"].items())))
    print(f"details: {args.out}/{REPORT_NAME}")
    if args.semantics == "mediapipe":
        from mp_lightning.preprocess.semantics import write_mediapipe_semantics

        summary = write_mediapipe_semantics(args.out, progress=not args.no_progress)
        print(f"motion descriptors (mediapipe stand-in) for {summary['clips']} clips; PCA in {summary['pca']}")
    return 0
