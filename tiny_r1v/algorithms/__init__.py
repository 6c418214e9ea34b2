"""Pure-tensor RL algorithm code. Importing the package registers ``lipo`` with verl."""

from tiny_r1v.algorithms.lipo import LipoOutput, lipo_advantage
from tiny_r1v.algorithms.verl_lipo import compute_lipo_outcome_advantage

__all__ = ["LipoOutput", "compute_lipo_outcome_advantage", "lipo_advantage"]
