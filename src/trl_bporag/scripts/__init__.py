"""The stage scripts, one per stage, as TRL keeps its own in ``trl/scripts``: each has a ``main`` (called by the whole
recipe, :mod:`trl_bporag.scripts.bporag`) and a ``cli`` (``trl-bporag <stage>``, ``python examples/<stage>.py``)."""
