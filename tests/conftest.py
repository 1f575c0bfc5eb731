import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# mininet/ holds the campus topology and lab helpers; it is not a package, so
# that `import mininet` still finds the real Mininet library.
sys.path.insert(0, str(ROOT / "mininet"))
sys.path.insert(0, str(ROOT))
