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
    from mp_lightning.preprocess.landmark_sources import SOURCES
    from mp_lightning.preprocess.pipeline import Settings

    d = Settings()
    parser.add_argument("raw", help="folder of raw videos (.mp4 .mov .avi .mkv .webm), RAW/<identity>/.../<video>.mp4")
    parser.add_argument("out", help="output dataset root (created); rerun with the same OUT to resume")
    parser.add_argument("--size", type=int, default=d.size, help=f"crop size in pixels, even (default {d.size})")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes, one video each (default 1)")
    parser.add_argument(
        "--landmarks", choices=SOURCES + ("precomputed",), default=d.landmarks,
        help="mediapipe: 478-point FaceMesh with irises (default); mediapipe468; mediapipe68: sparse iBUG-68 subset; "
             "mediapipe-tessellation: 478 points drawn as the full mesh; precomputed: <video>.landmarks.npy beside "
             "each raw video, (F, K, 2) in [0, 1] of the raw frame (with RAW/landmarks.json, else the official 669 "
             "preset); none: no landmarks",
    )
    parser.add_argument("--identity-map", metavar="CSV", default=None,
                        help="CSV with header video,identity[,split] (video: path relative to RAW or file name)")
    parser.add_argument("--min-frames", type=int, default=d.min_frames,
                        help=f"drop face tracks shorter than this (default {d.min_frames})")
    parser.add_argument("--max-frames", type=int, default=d.max_frames,
                        help=f"cut longer tracks into clips of at most this many frames (default {d.max_frames})")
    parser.add_argument("--smooth-landmarks", nargs="?", const="savgol", default="none",
                        choices=("none", "savgol", "one_euro"),
                        help="temporal smoothing of the landmarks (flag alone: savgol)")
    parser.add_argument("--every", type=int, default=d.every,
                        help=f"run the face detector on every n-th frame, interpolate between (default {d.every})")
    parser.add_argument("--detect-size", type=int, default=d.detect_size,
                        help=f"downscale frames to this longer side for face detection (default {d.detect_size})")
    parser.add_argument("--min-face", type=int, default=d.min_face,
                        help=f"drop faces smaller than this many pixels in the raw video (default {d.min_face})")
    parser.add_argument("--max-missing", type=float, default=d.max_missing,
                        help=f"drop clips with landmarks missing on more than this share of frames (default {d.max_missing})")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help=f"share of identities put in test/, by a hash of the name (default {d.test_fraction})")
    parser.add_argument("--semantics", choices=("none", "mediapipe"), default="none",
                        help="also write <clip>.semantics.npy motion descriptors (PIRender's input): mediapipe = a 73-d "
                             "stand-in for Deep3DFaceRecon from the 3D face mesh (see mp_lightning.preprocess.semantics)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mp_lightning.preprocess.pipeline import REPORT_NAME, Settings, preprocess_dataset

    settings = Settings(
        size=args.size, landmarks=args.landmarks, smooth=args.smooth_landmarks, min_frames=args.min_frames,
        max_frames=args.max_frames, every=args.every, detect_size=args.detect_size, min_face=args.min_face,
        max_missing=args.max_missing, test_fraction=args.test_fraction,
    )
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
