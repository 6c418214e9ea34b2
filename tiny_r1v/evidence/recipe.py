"""The whole recipe at small scale (issue "Evidence II"): the common base, one LIPO expert per
task and one model trained on the mixture, every merge of the experts, and one evaluation of all
of them on the held-out tasks.

`RecipeConfig` is the schema of ``configs/recipe.yaml``. `run_recipe` makes each stage of each
seed in turn and skips what an earlier invocation finished, so a killed pipeline continues where
it was:

1. **base** (`tiny_r1v.evidence.base.build_base`): testbed (train / val / test) and the
   warm-started model; reused when its files exist.
2. **experts** and **mixture**: ordinary training runs (``launch/lipo.py`` semantics through
   `tiny_r1v.evidence.sweep.run_training`), skipped when finished, resumed from their newest
   checkpoint when interrupted. Each validates greedily on the validation split.
3. **merges**: ``launch/amm.py``'s check and actor per merge; a finished output (its
   provenance file) is reused, an interrupted one continues from its journal. A merge with
   ``choose`` merges every candidate setting, evaluates them on the validation split and keeps
   the best average accuracy (the test split is never used for a choice).
4. **eval**: ``launch/eval.py``'s `run_eval` on the test split of every task for every model
   (greedy, or ``eval_samples`` samples per prompt drawn as the rollouts draw);
   pairs evaluated before with the same settings and model files are reused.
5. **report** (`tiny_r1v.evidence.recipe_report`), rewritten on every invocation.

Every stage's config is written under ``<seed dir>/configs/`` and logged with the command that
runs the stage alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tiny_r1v.config.loader import ConfigError, labelled, load_config, require, section, to_dict
from tiny_r1v.config.train import TrainConfig
from tiny_r1v.eval.config import EvalConfig, like_training
from tiny_r1v.evidence.base import TESTBED_KINDS, BaseConfig
from tiny_r1v.evidence.sweep import finished, run_overrides
from tiny_r1v.merge.config import MergeConfig, MethodName
from tiny_r1v.tasks import Task

logger = logging.getLogger(__name__)

MIXTURE = "mixture"
"""Name of the model trained on every task's data (a row and run directory name)."""
BASE = "base"
"""Name of the warm-started base model in the table."""
CHOICES_FILE = "choices.json"
"""In a seed directory: each chosen merge's candidates, their validation accuracy and the choice."""


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    """Run directory name and table label."""
    task: Task
    """The testbed task it trains on (``data.task``; its data under the base's ``data/<task>/``)."""


@dataclass(frozen=True)
class MergeSpec:
    name: str
    """Output directory name and table label."""
    method: MethodName
    """`MergeConfig.method`."""
    overrides: tuple[str, ...] = ()
    """Merge config overrides (``key.sub=value``) that make this row, e.g. ``amm.alpha=uniform``."""
    choose: tuple[str, ...] = ()
    """Candidate overrides (e.g. ``task_arithmetic.lam=0.3``), one merged per entry; the one with
    the best average validation accuracy is the row. Empty: no choice."""


def _default_experts() -> tuple[ExpertSpec, ...]:
    return tuple(ExpertSpec(task, task) for task in TESTBED_KINDS)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RecipeConfig:
    output_dir: str = "outputs/recipe"
    """Root of everything the recipe writes: ``seed-<s>/{runs,merges,eval,eval-val,configs,report}``
    and, with several seeds, ``report/`` over them."""
    base_dir: str = "outputs/evidence"
    """The common base (`python -m tiny_r1v.evidence.base --out`): built here when missing."""
    base: BaseConfig = field(default_factory=BaseConfig)
    """Settings of the base when it has to be built (ignored when it exists)."""
    train_config: str = "configs/quickstart.yaml"
    """Training config every run starts from."""
    train_overrides: tuple[str, ...] = ()
    """Training overrides for every run, before the recipe's own (data, seeds, directories, steps)."""
    expert_steps: int = 30
    """Training steps of each expert; the mixture trains ``len(experts)`` times as many, so it
    sees as many samples as the experts together."""
    experts: tuple[ExpertSpec, ...] = field(default_factory=_default_experts)
    mixture: bool = True
    """Train the mixture model (every expert's task in one run)."""
    merge_config: str = "configs/amm.yaml"
    """Merge config every merge starts from (its base, experts and output are set by the recipe)."""
    merge_overrides: tuple[str, ...] = ()
    """Merge overrides for every merge, before the merge's own."""
    merges: tuple[MergeSpec, ...] = ()
    """The merges, one table row each."""
    seeds: tuple[int, ...] = (1,)
    """Seeds of the whole pipeline after the base (data order, sampling, learner)."""
    eval_samples: int = 0
    """Evaluation (the table and the validation choices): 0 greedy; k > 0 samples per prompt drawn
    as the rollouts draw (their temperature and top_p), the same sampling seeds for every model."""

    def validate(self) -> RecipeConfig:
        require(self.output_dir != "", "output_dir", "must not be empty")
        require(self.expert_steps > 0, "expert_steps", f"must be > 0, got {self.expert_steps}")
        require(len(self.experts) > 0, "experts", "must list at least one")
        require(len(self.seeds) > 0, "seeds", "must list at least one")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must be unique")
        require(self.eval_samples >= 0, "eval_samples", f"must be >= 0, got {self.eval_samples}")
        names = [e.name for e in self.experts] + [m.name for m in self.merges] + [BASE, MIXTURE]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "merges", f"expert and merge names must be unique and not base/mixture: {', '.join(dup)}")
        for i, expert in enumerate(self.experts):
            require(expert.task in TESTBED_KINDS, f"experts[{i}].task", f"must be a testbed task {list(TESTBED_KINDS)}")
        for i, merge in enumerate(self.merges):
            with section(f"merges[{i}]"):
                for item in (*merge.overrides, *merge.choose):
                    require("=" in item, "overrides", f"{item!r}: expected key.sub=value")
        with section("base"):
            require(self.base.val_rows > 0, "val_rows", "the recipe chooses on the validation split: must be > 0")
        return self


# ---------------------------------------------------------------------------------------------
# paths and stage configs (pure)


def seed_dir(cfg: RecipeConfig, seed: int) -> Path:
    return Path(cfg.output_dir) / f"seed-{seed}"


def data_file(cfg: RecipeConfig, task: str, split: str) -> Path:
    return Path(cfg.base_dir) / "data" / task / f"{split}.jsonl"


def warm_model(cfg: RecipeConfig) -> Path:
    return Path(cfg.base_dir) / "warm-model"


def run_names(cfg: RecipeConfig) -> list[str]:
    """The training runs of a seed: each expert, then the mixture if it is trained."""
    return [e.name for e in cfg.experts] + ([MIXTURE] if cfg.mixture else [])


def run_dir(cfg: RecipeConfig, seed: int, name: str) -> Path:
    return seed_dir(cfg, seed) / "runs" / name


def training_overrides(cfg: RecipeConfig, seed: int, name: str) -> list[str]:
    """Overrides of `cfg.train_config` that make the run `name` (an expert or the mixture)."""
    if name == MIXTURE:
        tasks, task, steps = [e.task for e in cfg.experts], "mixed", cfg.expert_steps * len(cfg.experts)
    else:
        expert = next(e for e in cfg.experts if e.name == name)
        tasks, task, steps = [expert.task], expert.task, cfg.expert_steps
    return [
        f"model.path={json.dumps(str(warm_model(cfg)))}",
        f"data.image_position={cfg.base.image_position}",  # the base learnt to read its images there
        *cfg.train_overrides,
        f"trainer.total_steps={steps}",
        *run_overrides(
            task,
            [data_file(cfg, t, "train") for t in tasks],
            [data_file(cfg, t, "val") for t in tasks],
            seed,
            run_dir(cfg, seed, name),
        ),
    ]


def training_config(cfg: RecipeConfig, seed: int, name: str) -> TrainConfig:
    with labelled(f"seed {seed} run {name}"):
        return load_config(TrainConfig, cfg.train_config, training_overrides(cfg, seed, name))


def eval_config(cfg: RecipeConfig, seed: int) -> EvalConfig:
    """The evaluation of a seed's models, prompted, generated and scored as its experts trained."""
    first = training_config(cfg, seed, cfg.experts[0].name)
    return like_training(first, seed_dir(cfg, seed) / "eval", cfg.eval_samples)


def merge_output(cfg: RecipeConfig, seed: int, name: str) -> Path:
    return seed_dir(cfg, seed) / "merges" / name


def candidates(spec: MergeSpec) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) of each merge the spec makes: itself, or one per `choose` entry
    (labelled ``<name>-<k>``)."""
    if not spec.choose:
        return [(spec.name, spec.overrides)]
    return [(f"{spec.name}-{k}", (*spec.overrides, choice)) for k, choice in enumerate(spec.choose)]


def merge_config(cfg: RecipeConfig, seed: int, spec: MergeSpec, label: str, overrides: Sequence[str]) -> MergeConfig:
    items = [
        *cfg.merge_overrides,
        f"base={json.dumps(str(warm_model(cfg)))}",
        "experts=[]",
        f"method={spec.method}",
        f"output={json.dumps(str(merge_output(cfg, seed, label).absolute()))}",
        *overrides,
    ]
    with labelled(f"seed {seed} merge {label}"):
        return load_config(MergeConfig, cfg.merge_config, items)


def choose_best(val_accuracy: dict[str, float], labels: Sequence[str]) -> str:
    """The label of the best average validation accuracy; ties go to the earlier candidate."""
    return max(labels, key=lambda label: (val_accuracy[label], -labels.index(label)))


def check(cfg: RecipeConfig) -> None:
    """Before Ray starts: the stage configs exist and every training and merge config loads
    (a ConfigError names the seed, the run or merge, and the key)."""
    for key in ("train_config", "merge_config"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError((key, f"no config file at {getattr(cfg, key)}"))
    for seed in cfg.seeds:
        for name in run_names(cfg):
            training_config(cfg, seed, name)
        for spec in cfg.merges:
            for label, overrides in candidates(spec):
                merge_config(cfg, seed, spec, label, overrides)


# ---------------------------------------------------------------------------------------------
# the stages (Ray, I/O)


def _write_config(directory: Path, name: str, config: object) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
    return path


def ensure_base(cfg: RecipeConfig) -> None:
    """Build what is missing of the base (each part of `build_base` is cached)."""
    needed = [warm_model(cfg) / "config.json"] + [
        data_file(cfg, e.task, split) for e in cfg.experts for split in ("train", "val", "test")
    ]
    if all(path.is_file() for path in needed):
        logger.info("base: reusing %s", cfg.base_dir)
        return
    from tiny_r1v.evidence.base import build_base

    logger.info("base: building what is missing in %s", cfg.base_dir)
    build_base(Path(cfg.base_dir), cfg.base)


def train_stage(cfg: RecipeConfig, seed: int) -> None:
    from tiny_r1v.evidence.sweep import run_training

    for name in run_names(cfg):
        train = training_config(cfg, seed, name)
        directory = run_dir(cfg, seed, name)
        if finished(directory, train.trainer.total_steps):
            logger.info("seed %d: %s trained earlier, skipped", seed, name)
            continue
        path = _write_config(seed_dir(cfg, seed) / "configs", f"train-{name}", train)
        logger.info("seed %d: training %s (alone: python launch/lipo.py --config %s --resume)", seed, name, path)
        run_training(train)


def _merge(cfg: RecipeConfig, seed: int, spec: MergeSpec, label: str, overrides: Sequence[str]) -> Path:
    from tiny_r1v.merge import PROVENANCE
    from tiny_r1v.merge.actor import run_on_ray
    from tiny_r1v.merge.runner import check
    from tiny_r1v.merge.sources import resolve

    merge = merge_config(cfg, seed, spec, label, overrides)
    output = Path(merge.output)
    if (output / PROVENANCE).is_file():
        logger.info("seed %d: merge %s done earlier, skipped", seed, label)
        return output
    experts = [str(run_dir(cfg, seed, e.name).absolute()) for e in cfg.experts]
    path = _write_config(seed_dir(cfg, seed) / "configs", f"merge-{label}", merge)
    alone = f"python launch/amm.py --config {path} --experts {','.join(experts)}"
    logger.info("seed %d: merging %s (alone: %s)", seed, label, alone)
    base, sources = resolve(merge, experts)
    check(merge, base, sources)
    run_on_ray(merge, base, sources)
    return output


def _evaluate(eval_cfg: EvalConfig, models: dict[str, Path], benchmarks: dict[str, Path], name: str, seed_path: Path):
    from tiny_r1v.eval.inputs import resolve_benchmarks, resolve_models
    from tiny_r1v.eval.runner import run_eval

    path = _write_config(seed_path / "configs", name, eval_cfg)
    model_items, benchmark_items = ([f"{k}={v}" for k, v in items.items()] for items in (models, benchmarks))
    logger.info(
        "%s: %d models x %d tasks (alone: python launch/eval.py --config %s --models %s --benchmarks %s)",
        name,
        len(models),
        len(benchmarks),
        path,
        ",".join(model_items),
        ",".join(benchmark_items),
    )
    return run_eval(eval_cfg, resolve_models(eval_cfg, model_items), resolve_benchmarks(eval_cfg, benchmark_items))


def merge_stage(cfg: RecipeConfig, seed: int, eval_cfg: EvalConfig) -> dict[str, Path]:
    """Every merge row's model directory, choices made on the validation split."""
    rows: dict[str, Path] = {}
    choices: dict[str, dict] = {}
    val = {e.task: data_file(cfg, e.task, "val") for e in cfg.experts}
    here = seed_dir(cfg, seed)
    for spec in cfg.merges:
        made = {label: _merge(cfg, seed, spec, label, overrides) for label, overrides in candidates(spec)}
        if not spec.choose:
            rows[spec.name] = made[spec.name]
            continue
        val_cfg = replace(eval_cfg, output_dir=str(here / "eval-val"))
        result = _evaluate(val_cfg, made, val, f"eval-val-{spec.name}", here)
        accuracy = {label: _average_accuracy(result.rows, label) for label in made}
        best = choose_best(accuracy, list(made))
        rows[spec.name] = made[best]
        choices[spec.name] = {
            "candidates": dict(zip(made, spec.choose, strict=True)),
            "val_accuracy": accuracy,
            "chosen": best,
        }
        logger.info("seed %d: %s chose %s on the validation split (%s)", seed, spec.name, best, accuracy)
    (here / CHOICES_FILE).write_text(json.dumps(choices, indent=1) + "\n")
    return rows


def _average_accuracy(rows: Sequence, model: str) -> float:
    from tiny_r1v.eval.metrics import AVERAGE

    return next(row.accuracy for row in rows if row.model == model and row.benchmark == AVERAGE)


def run_seed(cfg: RecipeConfig, seed: int) -> list[Path]:
    """Every stage of one seed (Ray must be started); returns the report files."""
    from tiny_r1v.eval.runner import describe_decoding
    from tiny_r1v.evidence.recipe_report import write_report

    train_stage(cfg, seed)
    here = seed_dir(cfg, seed)
    eval_cfg = eval_config(cfg, seed)
    merged = merge_stage(cfg, seed, eval_cfg)
    models = {BASE: warm_model(cfg), **{name: run_dir(cfg, seed, name) for name in run_names(cfg)}, **merged}
    tests = {e.task: data_file(cfg, e.task, "test") for e in cfg.experts}
    result = _evaluate(eval_cfg, models, tests, "eval", here)
    experts = {e.task: e.name for e in cfg.experts}
    return write_report(here / "report", {seed: result.rows}, experts, describe_decoding(eval_cfg))


def run_recipe(cfg: RecipeConfig) -> list[Path]:
    """The whole pipeline for every seed (Ray must be started); returns the last report's files
    (over all seeds when there are several)."""
    from tiny_r1v.eval.metrics import Summary
    from tiny_r1v.eval.runner import describe_decoding
    from tiny_r1v.evidence.recipe_report import read_rows, write_report

    ensure_base(cfg)
    files: list[Path] = []
    for seed in cfg.seeds:
        files = run_seed(cfg, seed)
    if len(cfg.seeds) > 1:
        per_seed: dict[int, list[Summary]] = {s: read_rows(seed_dir(cfg, s) / "report") for s in cfg.seeds}
        experts = {e.task: e.name for e in cfg.experts}
        decoding = describe_decoding(eval_config(cfg, cfg.seeds[0]))
        files = write_report(Path(cfg.output_dir) / "report", per_seed, experts, decoding)
    return files
