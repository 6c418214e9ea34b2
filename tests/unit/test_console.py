from __future__ import annotations

import logging

from tiny_r1v.console import setup_driver


def test_driver_console_keeps_our_info_and_everyones_warnings(tmp_path, capsys):
    log = tmp_path / "logs" / "driver.log"
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    saved = root.handlers[:], root.level, ray_logger.handlers[:], ray_logger.propagate
    try:
        logging.basicConfig(format="%(message)s", force=True)  # as importing verl does
        for verbose in (False, True):
            setup_driver(log, verbose)
            logging.getLogger("ray.worker").info("ray info %s", verbose)
            logging.getLogger("a_library.module").warning("library warning %s", verbose)
            logging.getLogger("tiny_r1v.trainer.driver").info("our info %s", verbose)
        console = capsys.readouterr().err
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers, root.level, ray_logger.handlers, ray_logger.propagate = saved
    assert "ray info False" not in console and "ray info True" in console
    assert "library warning False" in console and "our info False" in console
    text = log.read_text()
    for line in ("ray info False", "library warning False", "our info False", "ray info True"):
        assert line in text
    # A second call replaced the first one's handlers: no line was written twice.
    assert console.count("our info True") == 1 and text.count("our info True") == 1
