"""Assets of the CPU quickstart, built once offline: a tiny model, real digit images, a warm start.

`launch/lipo.py` calls `prepare()` before training any config whose model is the quickstart's
warm-started one (`configs/quickstart.yaml`, the default): it writes, under
`outputs/quickstart-assets/` (skipping what already exists),

- `base-model/`: the tiny random Qwen2.5-VL (`tiny_r1v.models.tiny`);
- `data/train.jsonl`: scikit-learn's handwritten digits as "read the digit" OCR prompts, and
  `data/test.jsonl`: held-out digits (scikit-learn's test split) for validation;
- `warm-model/`: the base after a short supervised warm start (`tiny_r1v.warmstart`) that
  teaches the answer format with verbose reasoning of varying length, so RL starts from a
  policy that earns reward and has length to lose.

`configs/quickstart.yaml` points at `warm-model/`, `data/train.jsonl` and `data/test.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from tiny_r1v.config.train import TrainConfig

ASSETS = Path("outputs/quickstart-assets")
EXAMPLES = 256
VAL_EXAMPLES = 64
WARM_START_STEPS = 400


def uses_assets(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains the quickstart's warm-started model (which ``prepare`` builds)."""
    return Path(cfg.model.path) == ASSETS / "warm-model"


def prepare(root: Path = ASSETS, *, min_pixels: int, max_pixels: int, seed: int = 0) -> None:
    """Build whatever of the quickstart's assets is missing under ``root``."""
    # Imported here: launch/lipo.py imports this module for `uses_assets` on every run.
    from tiny_r1v.data import load_examples
    from tiny_r1v.data.offline import digits
    from tiny_r1v.data.writer import DatasetWriter
    from tiny_r1v.models.tiny import build_tiny_model
    from tiny_r1v.warmstart import WarmStartConfig, warm_start

    base, data, warm = root / "base-model", root / "data", root / "warm-model"
    if not (base / "config.json").is_file():
        print(f"quickstart: building the tiny model in {base}")
        build_tiny_model(base, seed=seed)
    if not (data / "train.jsonl").is_file():
        print(f"quickstart: writing {EXAMPLES} digit images to {data}")
        with DatasetWriter(data, split="train", prefix="digits") as writer:
            digits(writer, split="train", limit=EXAMPLES, seed=seed)
    if not (data / "test.jsonl").is_file():
        print(f"quickstart: writing {VAL_EXAMPLES} held-out digit images to {data}")
        with DatasetWriter(data, split="test", prefix="digits") as writer:
            digits(writer, split="test", limit=VAL_EXAMPLES, seed=seed)
    if not (warm / "config.json").is_file():
        print(f"quickstart: warm start ({WARM_START_STEPS} supervised steps, a few minutes on CPU)")
        examples = load_examples([data / "train.jsonl"], min_pixels=min_pixels, max_pixels=max_pixels)
        warm_start(base, examples, warm, WarmStartConfig(steps=WARM_START_STEPS, seed=seed))
