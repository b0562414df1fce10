NAME = "report"
HELP = "One self-contained HTML page (config, curves, metrics, media) for a run, compare or ablate folder: mp-lightning report DIR --out report.html"


def add_arguments(parser):
    parser.add_argument("folder", help="a run folder (runs/NAME), a compare --out folder or an ablate output folder")
    parser.add_argument("--out", default=None, help="HTML file to write (default: FOLDER/report.html)")


def run(args) -> int:
    from pathlib import Path

    from mp_lightning.runs.report import write_report

    out = write_report(args.folder, args.out or Path(args.folder) / "report.html")
    print(f"wrote {out}")
    return 0
