"""Training: records, feature cache, losses, trainer."""
