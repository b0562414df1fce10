"""`mp-lightning ablate experiments/paper/ablation_*.yaml [key=value ...]`."""
NAME = "ablate"
HELP = ("Train and evaluate every row of an ablation set (reusing finished rows) and write the ablation "
        "table (markdown, CSV, W&B table): mp-lightning ablate [--dir D] SET.yaml [key=value ...] (options first)")


def add_arguments(parser):
    parser.add_argument("ablation_set", help="ablation set YAML (experiments/paper/ablation_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides added to every row (e.g. data.root=...)")
    parser.add_argument("--dir", default=None, help="output directory (default runs/ablations/<set name>)")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
    parser.add_argument("--no-wandb-table", action="store_true", help="do not log the table as an offline W&B run")


def run(args) -> int:
    from mp_lightning.runs.ablation import run_ablation

    only = [r for r in args.rows.split(",") if r] if args.rows else None
    result = run_ablation(args.ablation_set, args.overrides, out_dir=args.dir, only=only,
                          log_wandb_table=not args.no_wandb_table)
    failed = [r["name"] for r in result["rows"] if r.get("state") == "failed"]
    print(f"wrote {result['table_md']} and {result['table_csv']}")
    if failed:
        print(f"failed rows: {', '.join(failed)} (see the *.error.txt files beside the table)")
        return 1
    return 0
