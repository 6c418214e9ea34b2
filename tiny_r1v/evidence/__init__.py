"""Evidence runs: the common base the length-control methods start from (`tiny_r1v.evidence.base`)."""
