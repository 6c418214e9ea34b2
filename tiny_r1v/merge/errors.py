"""The one error a merge raises for bad inputs, so the launcher can print it without a traceback."""


class MergeError(ValueError):
    """Inputs that cannot be merged (missing checkpoints, mismatched tensors, unmatched names,
    non-finite results); the message names the tensor and the expert."""
