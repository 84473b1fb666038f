"""The ``fashionvil_trainer`` and its parts: batches, optimization, evaluation, checkpoints, logs."""
