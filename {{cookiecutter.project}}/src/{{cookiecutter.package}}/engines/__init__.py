"""The two engines: `raw` (plain PyTorch) and `lightning`. Each exposes `fit(cfg, run_dir) -> metrics`."""
