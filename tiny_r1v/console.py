"""What a run prints: its progress bar, warnings, errors and end-of-run summary on the console;
the INFO lines of Ray, vLLM, torch and our own modules in log files under the run's ``logs/``.

`--verbose` on a launcher (or ``TINY_R1V_VERBOSE=1``) brings all of it back to the console. For
training and evaluation it sets the config's ``verbose`` key, which every actor receives with its
config; the merge's one actor keeps its console (its output is the progress bar Ray draws), so
there the flag only concerns the launcher's and Ray's lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "TINY_R1V_VERBOSE"
"""Set to 1 to run every launcher verbose."""

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def verbose_default() -> bool:
    """Whether the environment asks for verbose runs."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def add_verbose_flag(parser: argparse.ArgumentParser, logs: str) -> None:
    """A launcher's ``--verbose`` (default from ``TINY_R1V_VERBOSE``); ``logs`` says where the
    lines go otherwise."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=verbose_default(),
        help=f"every process's output and Ray's and vLLM's INFO lines on the console (default: in {logs}; "
        f"also {VERBOSE_ENV}=1)",
    )


def setup_driver(log_file: Path, verbose: bool) -> None:
    """The launcher's process: every record to ``log_file`` (appended); on the console our own
    INFO lines and everyone's warnings and errors (everything with ``verbose``)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(_FORMAT)
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(_FORMAT)
    if not verbose:
        to_console.addFilter(lambda record: record.levelno >= logging.WARNING or record.name.startswith("tiny_r1v"))
    _install(root, to_file, to_console)
    # Ray gives its logger a console handler of its own at import; its records go through ours.
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers, ray_logger.propagate = [], True


def _install(root: logging.Logger, *handlers: logging.Handler) -> None:
    """Replace the console handlers on the root logger (an earlier call's, and the one
    `logging.basicConfig` adds, as importing verl does) and keep every other (a test runner's
    capture), then route Python warnings through logging."""
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler or getattr(h, "tiny_r1v", False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.tiny_r1v = True
        root.addHandler(handler)
    logging.captureWarnings(True)


def ray_init_options() -> dict[str, object]:
    """`ray.init` options that hand Ray's driver-side log lines to the handlers above (Ray
    otherwise attaches its own console handler at INFO)."""
    return {"logging_level": logging.INFO, "configure_logging": False, "log_to_driver": True}


def quiet_actor(log_dir: Path, name: str, verbose: bool) -> None:
    """In a Ray actor's process, unless ``verbose``: its standard output and error, C libraries'
    included, go to ``log_dir/<name>-<pid>.log``; log records of WARNING and above still reach
    the driver's console through the original standard error, which Ray forwards. Does nothing
    outside an actor, so the plain classes behave alike in tests."""
    import ray

    if verbose or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1)
    log = os.open(log_dir / f"{name}-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    to_file = logging.StreamHandler(sys.stderr)  # now the log file
    to_file.setFormatter(_FORMAT)
    to_console = logging.StreamHandler(console)
    to_console.setLevel(logging.WARNING)
    to_console.setFormatter(_FORMAT)
    root.handlers = []  # whatever Ray's worker set up wrote to the console
    _install(root, to_file, to_console)
