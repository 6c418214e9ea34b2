"""Builders and checks shared by test modules (importable as ``helpers``: pytest puts ``tests/``
on ``sys.path`` for its root ``conftest.py``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root counts as itself), keyed by path; the
    set of keys shows files added or removed."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def fill_checkpoint(step_dir: Path) -> Path:
    """Give ``step_dir`` rank 0's optimizer shard, which `tiny_r1v.trainer.checkpoint` requires
    of a complete checkpoint besides its model and state file."""
    from safetensors.torch import save_file

    (step_dir / "optim").mkdir(parents=True, exist_ok=True)
    save_file({}, step_dir / "optim" / "rank-0.safetensors")
    return step_dir


def stand_in_model(model_dir: Path) -> Path:
    """A model directory as `tiny_r1v.trainer.checkpoint` counts one (a config and a weights
    file, here empty), for tests that only resolve paths."""
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    save_file({}, model_dir / "model.safetensors")
    return model_dir


ROOT = Path(__file__).resolve().parent.parent
"""The repository's root (configs/, launch/)."""


def script(path: str) -> ModuleType:
    """The repository's script ``path`` (e.g. ``bench/step_projection.py``) as a module, loaded
    afresh (registered in ``sys.modules``, which its dataclasses look themselves up in)."""
    spec = importlib.util.spec_from_file_location(path.removesuffix(".py").replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def launcher(name: str) -> ModuleType:
    """``launch/<name>.py`` as a module, loaded afresh (its ``main(argv) -> int`` runs in this
    process)."""
    return script(f"launch/{name}.py")


def one_image_prompt(processor: object, question: str) -> str:
    """A user turn of one image placeholder and ``question``, chat-templated for generation."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


RED_ROW = {"question": "What colour?", "answer": "red", "task": "vqa", "images": ["images/red.png"]}
"""A valid dataset row whose image `write_red_dataset` writes."""


def write_red_dataset(directory: Path, rows: list[dict | str], name: str = "train.jsonl") -> Path:
    """``rows`` (dicts, or raw lines as strings) as the JSONL file ``directory/name``, beside
    ``images/red.png``, a red 56x56 square."""
    from PIL import Image

    (directory / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(directory / "images" / "red.png")
    path = directory / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def learner_prompts(processor: object) -> list:
    """Four prompts (`Prompt`): three with one image each, all of different sizes (56x56, 84x56,
    112x56), and one text-only."""
    from PIL import Image

    from tiny_r1v.protocol import Prompt

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    prompts = []
    for i, colour in enumerate(colours):
        content = [{"type": "image"}, {"type": "text", "text": f"What colour is shape {i}?"}]
        if i == 3:  # one text-only prompt in the batch
            content = content[1:]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = (Image.new("RGB", (56 + 28 * i, 56), colour),) if i != 3 else ()
        prompts.append(Prompt(uid=f"p{i}", text=text, images=images))
    return prompts


def learner_samples(processor: object, n: int = 2) -> list:
    """``n`` `TrainSample`s per prompt of `learner_prompts`: random responses of 3-11 tokens
    (seed 0), advantage +1 for the first of each group and -1 for the others."""
    import torch

    from tiny_r1v.protocol import TrainSample

    generator = torch.Generator().manual_seed(0)
    samples = []
    for prompt in learner_prompts(processor):
        for j in range(n):
            length = int(torch.randint(3, 12, (1,), generator=generator))
            ids = torch.randint(20, 400, (length,), generator=generator).tolist()
            samples.append(TrainSample(prompt=prompt, response_ids=tuple(ids), advantage=1.0 if j == 0 else -1.0))
    return samples


def vllm_tensor(saved: dict, name: str):
    """The tensor vLLM builds under `name` from a Hugging Face checkpoint's tensors (a dict of
    torch tensors): prefixes moved, q/k/v and gate/up fused along the output dimension."""
    import torch

    name = name.removeprefix("language_model.")
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    for merged, parts in fused.items():
        if f".{merged}." in name:
            return torch.cat([saved[name.replace(merged, part)] for part in parts])
    return saved[name]


def llm_parameters(llm) -> dict:
    """An in-process vLLM engine's parameters that its CPU backend keeps (it repacks linear
    weights for its kernels and leaves those parameters empty), by vLLM name."""
    (params,) = llm.apply_model(lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if p.numel()})
    return params


def engine_parameters(worker) -> dict:
    """`llm_parameters` of a rollout worker actor's engine (written out again: what runs in the
    actor must not refer to this module, which its process cannot import)."""
    import ray

    def read(actor) -> dict:
        (params,) = actor.engine.llm.apply_model(
            lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if p.numel()}
        )
        return params

    return ray.get(worker.__ray_call__.remote(read))
