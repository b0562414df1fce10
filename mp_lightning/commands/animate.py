NAME = "animate"
HELP = "Animate a source portrait with a driving video and write an mp4"


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, help="mp-lightning checkpoint of a base-model stage (warp, refine, fomm)")
    parser.add_argument("--source", required=True,
                        help="source image (landmarks from IMG.landmarks.npy beside it, else detected) or a clip .mp4 "
                             "(its frame --source-frame and that frame's landmarks)")
    parser.add_argument("--source-frame", type=int, default=0, help="frame of --source when it is a video")
    parser.add_argument("--driving", required=True, help="driving video (landmarks from CLIP.landmarks.npy beside it, else detected)")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    parser.add_argument("--max-frames", type=int, default=None, help="animate only the first N driving frames")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--sr-checkpoint", default=None, help="temporal super-resolution checkpoint: write 2x video")
    parser.add_argument("--driving-semantics", default=None,
                        help="PIRender: the driving motion descriptors, float32 (T, 73) .npy (default: "
                             "DRIVING.semantics.npy beside the clip)")
    parser.add_argument("--source-identity", default=None,
                        help="precomputed identity embedding (.npy) for checkpoints that condition on one, e.g. the "
                             "official MetaPortrait weights; default: SOURCE.identity.npy beside the source when present")
    parser.add_argument("--relative", action=__import__("argparse").BooleanOptionalAction, default=True,
                        help="stages with a relative mode (FOMM): relative motion with adapt_movement_scale "
                             "(default) or absolute motion")


def run(args) -> int:
    from mp_lightning.preprocess.inputs import resolve_device

    import torch

    from mp_lightning import load_stage
    from mp_lightning.io.video import write_video
    from mp_lightning.preprocess.inputs import load_driving, load_source, load_source_inputs

    stage = load_stage(args.checkpoint, map_location=resolve_device(args.device))
    size = int(stage.hparams["config"]["data"]["image_size"])
    source, source_landmarks = load_source(args.source, size=size, frame=args.source_frame)
    driving, driving_landmarks = load_driving(args.driving, size=size, max_frames=args.max_frames)
    kwargs = {"relative": args.relative, "batch_size": args.batch_size, "progress": True}
    extra = load_source_inputs(stage, args.source, args.source_identity)
    if extra:
        kwargs["extra"] = extra
    # inputs a stage reads from files of its own (PIRender's descriptors)
    files = {"driving_semantics": args.driving_semantics} if args.driving_semantics else {}
    kwargs.update(stage.animation_inputs(source=args.source, driving=args.driving, source_frame=args.source_frame,
                                         **files))
    frames = stage.animate(source, driving, driving_landmarks, source_landmarks, **kwargs)
    if args.sr_checkpoint:
        sr = load_stage(args.sr_checkpoint, map_location=resolve_device(args.device))
        frames = sr.upscale_clip(frames, progress=True)
        source = torch.nn.functional.interpolate(source[None], size=frames.shape[-2:], mode="bicubic", align_corners=False)[0]
        driving = torch.nn.functional.interpolate(driving, size=frames.shape[-2:], mode="bicubic", align_corners=False)
    if args.side_by_side:
        frames = torch.cat([source[None].expand_as(frames).cpu(), driving.cpu().clamp(0, 1), frames], dim=3)
    out = write_video(args.out, frames, fps=args.fps)
    print(f"wrote {out}: {frames.shape[0]} frames at {frames.shape[-1]}x{frames.shape[-2]}")
    return 0
