"""Pure-tensor RL algorithm code. Importing the package registers ``lipo`` with verl."""

from tiny_r1v.algorithms.advantages import (
    ADVANTAGES,
    AdvantageFn,
    AdvantageResult,
    ScoredGroups,
    compute_advantages,
    group_ids,
    register_advantage,
)
from tiny_r1v.algorithms.lipo import LipoOutput, lipo_advantage
from tiny_r1v.algorithms.verl_lipo import compute_lipo_outcome_advantage

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "AdvantageResult",
    "LipoOutput",
    "ScoredGroups",
    "compute_advantages",
    "compute_lipo_outcome_advantage",
    "group_ids",
    "lipo_advantage",
    "register_advantage",
]
