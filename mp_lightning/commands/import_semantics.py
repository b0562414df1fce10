"""`mp-lightning import-semantics`: motion descriptors made elsewhere -> <clip>.semantics.npy (PIRender's input).

    mp-lightning import-semantics deep3dfacerecon MAT_ROOT DATA_ROOT   # Deep3DFaceRecon .mat per clip
    mp-lightning import-semantics pirender-lmdb PIRENDER_DATA OUT      # PIRender's processed VoxCeleb (lmdb)
"""
from __future__ import annotations

NAME = "import-semantics"
HELP = "import motion descriptors made elsewhere (Deep3DFaceRecon .mat files, PIRender's lmdb dataset)"


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=("deep3dfacerecon", "pirender-lmdb"),
                        help="deep3dfacerecon: SOURCE/<split>/<identity>/<video>/<clip>.mat (coeff (N, 257) + "
                             "transform_params (N, 5)) for the clips of TARGET; pirender-lmdb: PIRender's dataset "
                             "folder (train_list.txt, test_list.txt, <resolution>/ lmdb) converted into TARGET")
    parser.add_argument("source", help="the .mat root, or PIRender's dataset folder")
    parser.add_argument("target", help="our data root (deep3dfacerecon: existing; pirender-lmdb: created)")
    parser.add_argument("--resolution", type=int, default=256, help="pirender-lmdb: which lmdb (default 256)")


def run(args) -> int:
    from mp_lightning.preprocess.descriptor_import import import_deep3d_mats, import_pirender_lmdb

    if args.kind == "deep3dfacerecon":
        summary = import_deep3d_mats(args.source, args.target)
        print(f"wrote {summary['written']} <clip>.semantics.npy (kind deep3dfacerecon) in {args.target}")
        if summary["missing"]:
            print(f"{len(summary['missing'])} clips have no .mat file, e.g. {summary['missing'][:3]}")
    else:
        summary = import_pirender_lmdb(args.source, args.target, resolution=args.resolution)
        print(f"imported {summary['clips']} clips into {args.target} (train with data.semantics=true "
              f"data.use_landmarks=false)")
    return 0
