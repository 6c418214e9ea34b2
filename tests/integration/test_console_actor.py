"""An actor's output leaves the console for its log file (`tiny_r1v.console.quiet_actor`)."""

from __future__ import annotations

import ray

from tiny_r1v.console import quiet_actor


def test_quiet_actor_sends_output_to_its_log_file(ray_local, tmp_path):
    # Defined here: Ray ships it to the workers by value (they cannot import test modules).
    class Noisy:
        def __init__(self, log_dir: str, verbose: bool) -> None:
            from pathlib import Path

            quiet_actor(Path(log_dir), "noisy", verbose)

        def speak(self) -> int:
            import logging
            import os

            print("plain print", flush=True)
            os.write(1, b"C-level write\n")
            logging.getLogger("vllm.x").info("an info line")
            logging.getLogger("vllm.x").warning("a warning line")
            return os.getpid()

    actors = [ray.remote(Noisy).remote(str(tmp_path / mode), mode == "verbose") for mode in ("quiet", "verbose")]
    quiet, verbose = ray.get([actor.speak.remote() for actor in actors])
    for actor in actors:
        ray.kill(actor)
    text = (tmp_path / "quiet" / f"noisy-{quiet}.log").read_text()
    for line in ("plain print", "C-level write", "an info line", "a warning line"):
        assert line in text
    assert not (tmp_path / "verbose").exists()  # verbose: nothing redirected


def test_outside_an_actor_nothing_is_redirected(tmp_path, capfd):
    quiet_actor(tmp_path, "plain", verbose=False)
    print("still here")
    assert "still here" in capfd.readouterr().out
    assert not any(tmp_path.iterdir())
