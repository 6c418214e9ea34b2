"""AMM and baseline merges of expert checkpoints (SPEC §3): pure per-tensor methods in a registry
(`methods`), the treatment policy as data (`policy`), streaming safetensors I/O
(`safetensors_io`), and the job that ties them together (`runner`, `actor`)."""

from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.methods import METHODS, register
from tiny_r1v.merge.policy import RULES, assign
from tiny_r1v.merge.runner import PROVENANCE, REPORT, merge, merge_tensor

__all__ = [
    "METHODS",
    "PROVENANCE",
    "REPORT",
    "RULES",
    "MergeConfig",
    "MergeError",
    "assign",
    "merge",
    "merge_tensor",
    "register",
]
