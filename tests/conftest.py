import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# mininet/ holds the campus topology and lab helpers; it is not a package, so
# that `import mininet` still finds the real Mininet library.
sys.path.insert(0, str(ROOT / "mininet"))
sys.path.insert(0, str(ROOT))
# Shared helpers (flowsim, strategies, fakeswitch) for tests/unit and tests/integration.
sys.path.insert(0, str(ROOT / "tests"))


def wait_for(condition, timeout, step=0.2):
    """Poll `condition` until it is true or `timeout` seconds have passed (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False
