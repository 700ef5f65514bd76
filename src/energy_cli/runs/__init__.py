"""What lives in a run folder: claiming folders, checkpoints, resuming, locks, signals, and the files a run
writes (results.csv, train_log.csv, scores.npz, thresholds.json)."""
