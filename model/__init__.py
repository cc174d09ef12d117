"""Training and serving-side model code: event logs, splits, the sequence ranker, metrics and artifacts."""
