"""`mp-lightning weights`: which pretrained files exist, their checksums, where missing ones must go.

    mp-lightning weights                 # table of every file: present/missing, sha256, path
    mp-lightning weights --check         # same, exit status 1 when a file is missing or corrupt
    mp-lightning weights --download      # fetch the missing files (needs internet)
    mp-lightning weights alexnet vgg19   # only these
"""
from __future__ import annotations

import sys

from mp_lightning.errors import UserFacingError

NAME = "weights"
HELP = "List the pretrained weight files (present or missing, sha256, expected path); --download fetches them."


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these files (default: all)")
    parser.add_argument("--download", action="store_true", help="download the missing files (needs internet)")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a file is missing or fails its hash check"
    )


def _status(name: str) -> tuple[str, str]:
    """(state, sha256 first 12 hex or '-'): state is present, missing or CORRUPT."""
    from mp_lightning.io.weights import WEIGHTS, sha256

    w = WEIGHTS[name]
    if not w.path.is_file():
        return "missing", "-"
    digest = sha256(w.path)
    if w.sha256_prefix and not digest.startswith(w.sha256_prefix):
        return "CORRUPT", digest[:12]
    return "present", digest[:12]


def run(args) -> int:
    from mp_lightning.io.weights import WEIGHTS, download, torch_home

    names = list(args.names) or list(WEIGHTS)
    unknown = [n for n in names if n not in WEIGHTS]
    if unknown:
        raise UserFacingError(f"unknown weight name(s) {', '.join(unknown)}; known: {', '.join(WEIGHTS)}")

    if args.download:
        for name in names:
            if _status(name)[0] == "present":
                continue
            w = WEIGHTS[name]
            if not w.url:
                print(f"{name}: no direct download link; put {w.filename} at {w.path} by hand", flush=True)
                continue
            print(f"downloading {name}: {w.url} -> {w.path}", flush=True)
            download(name)

    print(f"pretrained weights under {torch_home()} ($TORCH_HOME)")
    rows = []
    for name in names:
        w = WEIGHTS[name]
        state, digest = _status(name)
        rows.append((name, state, digest, w.used_by, str(w.path)))
    widths = [max(len(r[i]) for r in rows + [("name", "state", "sha256", "", "")]) for i in range(3)]
    print(f"{'name':<{widths[0]}}  {'state':<{widths[1]}}  {'sha256':<{widths[2]}}  used by / path")
    for name, state, digest, used_by, path in rows:
        print(f"{name:<{widths[0]}}  {state:<{widths[1]}}  {digest:<{widths[2]}}  {used_by}")
        print(f"{'':<{widths[0] + widths[1] + widths[2] + 4}}  {path}")

    bad = [r for r in rows if r[1] != "present"]
    if bad:
        corrupt = [r[0] for r in bad if r[1] == "CORRUPT"]
        if corrupt:
            print(f"corrupt (sha256 does not match the hash in the file name): {', '.join(corrupt)}; delete and "
                  f"re-fetch", file=sys.stderr)
        missing = [r[0] for r in bad if r[1] == "missing"]
        if missing and not args.download:
            print(f"missing: {', '.join(missing)}. Fetch with `mp-lightning weights --download` or copy each file "
                  f"to the path shown; components with `pretrained: false` run without them.", file=sys.stderr)
        if args.check:
            return 1
    return 0
