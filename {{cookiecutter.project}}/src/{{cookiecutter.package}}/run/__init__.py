"""The machinery of a run that every engine shares: config rules, run folders, checkpoints, guards, the console, DDP."""
