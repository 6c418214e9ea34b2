"""The LIPO training system: Ray actors, the driver loop, metrics and checkpoints."""
