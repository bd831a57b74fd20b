"""The stage scripts, one per stage, as TRL keeps its own in ``trl/scripts``: each has a ``main`` (called by the whole
recipe, :mod:`trl_bporag.scripts.bporag`) and a ``cli`` (``trl-bporag <stage>``, ``python examples/<stage>.py``)."""

import logging
import os


def start_script() -> None:
    """What a stage script does before parsing its flags: silence the known harmless dependency warnings
    (:func:`trl_bporag.utils.quiet_known_warnings`) and log at ``$LOGLEVEL`` (default WARNING)."""
    from ..utils import quiet_known_warnings

    quiet_known_warnings()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))


def finish_training(trainer) -> None:
    """End a training script under a multi-process launch: every rank is done before any rank tears down the process
    group (gloo can abort a rank whose peer closes its sockets while it still reads them)."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
