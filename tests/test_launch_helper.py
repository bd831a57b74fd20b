"""The 2-process launch helper that the distributed tests share (tests/conftest.py: run_two)."""

import os

import pytest

SCRIPT = """
import os, sys
from accelerate import PartialState

state = PartialState(cpu=True)  # a gloo group of 2 CPU processes
marker = sys.argv[1]
if sys.argv[2] == "abort" and state.process_index == 1 and not os.path.exists(marker):
    open(marker, "w").close()
    os.abort()  # a native crash, like gloo's C++ transport failing
if sys.argv[2] == "raise" and state.process_index == 1:
    raise ValueError("a Python error in rank 1")
state.wait_for_everyone()
"""


@pytest.mark.parametrize("mode", ["abort", "raise"])
def test_run_two_reruns_a_native_abort_once_and_never_a_python_error(tmp_path, mode):
    from conftest import run_two

    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"]}
    if mode == "abort":
        with pytest.warns(UserWarning, match="aborted in native code"):
            res = run_two(str(script), str(tmp_path / "marker"), mode, outputs=[out], env=env)
        assert res.returncode == 0 and not out.exists()  # the rerun passed; the first run's outputs were removed
    else:
        res = run_two(str(script), str(tmp_path / "marker"), mode, outputs=[out], env=env)
        assert res.returncode != 0 and out.exists()  # not rerun
        assert "ValueError: a Python error in rank 1" in res.rank_errors
