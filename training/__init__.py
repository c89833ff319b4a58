"""The training side: from a run's clips to what a model trains on (LiveCC JSONL export, packers,
loaders)."""
