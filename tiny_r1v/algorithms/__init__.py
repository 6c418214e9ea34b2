"""Pure-tensor RL algorithm code. Importing the package registers ``lipo`` with verl."""

from tiny_r1v.algorithms.lipo import LipoOutput, compute_lipo_outcome_advantage, lipo_advantage

__all__ = ["LipoOutput", "compute_lipo_outcome_advantage", "lipo_advantage"]
