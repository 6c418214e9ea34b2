"""Schema of a merge job (SPEC §3 switches), loaded with `tiny_r1v.config.load_config`.

One section per merge method, named as the method is in the registry, so the job hands the
chosen method `getattr(cfg, cfg.method)`. The method names are listed here (`MethodName`) rather
than read from the registry, so this schema imports no maths; a unit test holds the two to each
other. `AmmConfig` extends `WudiConfig`: AMM optimises
WUDI's loss with extra terms, under the same optimiser settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from tiny_r1v.config.loader import require, section
from tiny_r1v.config.model_ref import ModelRef

Side = Literal["auto", "gram", "direct"]
MethodName = Literal["amm", "task_arithmetic", "ties", "wudi", "wudi_closed"]
"""The registered merge methods (`tiny_r1v.merge.methods.METHODS`), each a section below."""
VisionTreatment = Literal["mean", "merge", "base"]


@dataclass(frozen=True)
class TaskArithmeticConfig:
    lam: float = 0.3
    """Scale of the summed task vectors: W = W_0 + lam * sum_k tau_k."""

    def validate(self) -> None:
        require(self.lam > 0, "lam", f"must be > 0, got {self.lam}")


@dataclass(frozen=True)
class TiesConfig:
    density: float = 0.2
    """Share of each task vector's entries kept (largest magnitudes, per tensor), in (0, 1]."""
    sign: Literal["total", "frequency"] = "total"
    """Sign election: sign of the summed trimmed values (TIES paper) or of the majority count."""
    lam: float = 1.0
    """Scale of the disjoint mean: W = W_0 + lam * merged."""

    def validate(self) -> None:
        require(0 < self.density <= 1, "density", f"must be in (0, 1], got {self.density}")
        require(self.lam > 0, "lam", f"must be > 0, got {self.lam}")


@dataclass(frozen=True)
class WudiConfig:
    steps: int = 300
    """Adam steps per 2-D tensor."""
    lr: float = 1e-5
    """Adam learning rate (no weight decay)."""
    side: Side = "auto"
    """Where the loss is computed: `gram` through G_k = tau_k^T tau_k (d_in x d_in), `direct`
    through (X - tau_k) tau_k^T (d_out x d_out); auto = the smaller of the two."""

    def validate(self) -> None:
        require(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class WudiClosedConfig:
    ridge: float = 1e-6
    """Ridge added to the normal equations, relative to the mean eigenvalue of sum_k w_k G_k."""

    def validate(self) -> None:
        require(self.ridge > 0, "ridge", f"must be > 0 (the Gram sum is rank-deficient), got {self.ridge}")


@dataclass(frozen=True)
class AmmConfig(WudiConfig):
    alpha: Literal["norm", "inverse_norm", "uniform"] = "norm"
    """Inherent importance alpha_k: ||tau_k|| / sum_j ||tau_j||, its inverse-norm mirror, or 1/K."""
    beta: Literal["softmax", "none"] = "softmax"
    """Dynamic compatibility: softmax_k(cos(tau_m, tau_k) / temperature) each step, or none
    (beta_k = 1, so c_k = K alpha_k: uniform alpha then gives WUDI's c_k = 1)."""
    temperature: float = 1.0
    """Softmax temperature T of beta."""
    projection: Literal["penalty", "hard", "none"] = "penalty"
    """Gradient projection: penalty lam * ||(tau_m - tau_m_init)(I - P)||^2, hard (each step's
    update projected onto the span of P), or none."""
    rank: int = 16
    """Right singular vectors of the stacked task vectors per (non-zero) task spanning P; a
    tensor with rank * K >= d_in has P = I and no projection."""
    lam: float = 1.0
    """Weight lambda of the projection penalty."""

    def validate(self) -> None:
        super().validate()
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        require(self.lam >= 0, "lam", f"must be >= 0, got {self.lam}")


@dataclass(frozen=True)
class MergeConfig:
    base: str
    """Model directory of the base checkpoint the experts were trained from."""
    experts: tuple[ModelRef, ...] = ()
    """Known experts; the command line picks some by name (or gives directories instead)."""
    method: MethodName = "amm"
    """Merge method of the tensors the policy marks `merge`."""
    output: str = "outputs/merged"
    """Directory of the merged checkpoint (written as `<output>.merge-tmp`, then renamed); never
    an input's directory, inside one or holding one."""
    overwrite: bool = False
    """Replace an existing `output` that is a previous merge's output (holds its provenance)."""
    restart: bool = False
    """Discard an interrupted merge's `<output>.merge-tmp` instead of continuing it (continuing
    needs the same inputs and settings)."""
    vision: VisionTreatment = "mean"
    """Vision tower and merger (SPEC §3 switch): mean of task vectors, `merge` like the language
    model (2-D weights by `method`, the rest by mean), or `base` (kept as in the base)."""
    shard_size_mb: int = 4096
    """Largest output shard file in MiB (a bigger tensor gets a shard of its own)."""
    buffer_mb: int = 1024
    """Output buffer in MiB: merged tensors waiting for the background writer (at least one)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the per-tensor maths runs; auto = cuda when available."""
    hash_inputs: bool = True
    """Record the sha256 of every input file in the provenance (a timed phase of its own)."""
    task_arithmetic: TaskArithmeticConfig = field(default_factory=TaskArithmeticConfig)
    """Parameters of `task_arithmetic`."""
    ties: TiesConfig = field(default_factory=TiesConfig)
    """Parameters of `ties`."""
    wudi: WudiConfig = field(default_factory=WudiConfig)
    """Parameters of `wudi` (Adam on the WUDI loss)."""
    wudi_closed: WudiClosedConfig = field(default_factory=WudiClosedConfig)
    """Parameters of `wudi_closed` (the WUDI loss's minimiser, solved directly)."""
    amm: AmmConfig = field(default_factory=AmmConfig)
    """Parameters of `amm`."""

    def validate(self) -> MergeConfig:
        require(self.base != "", "base", "must not be empty")
        require(self.output != "", "output", "must not be empty")
        require(self.shard_size_mb > 0, "shard_size_mb", f"must be > 0, got {self.shard_size_mb}")
        require(self.buffer_mb >= 0, "buffer_mb", f"must be >= 0, got {self.buffer_mb}")
        names = [expert.name for expert in self.experts]
        for i, expert in enumerate(self.experts):
            with section(f"experts[{i}]"):
                expert.validate()
            require(expert.name not in names[:i], f"experts[{i}].name", f"duplicate name {expert.name!r}")
        for name in get_args(MethodName):
            with section(name):
                getattr(self, name).validate()
        return self

    def params(self) -> object:
        """The chosen method's parameter section."""
        return getattr(self, self.method)
