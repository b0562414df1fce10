"""Lightning callbacks shared by every stage and baseline: metrics, media, checkpoints."""
