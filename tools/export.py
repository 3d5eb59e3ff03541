"""The export step: `nbdev_export` (notebooks → mlprod/*.py), then the job notebooks copied into mlprod/jobs/.

Usage: python tools/export.py   (with the project's venv active)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_clean import ROOT, copy_jobs, run  # noqa: E402

if __name__ == "__main__":
    run("nbdev_export", ROOT)
    copy_jobs(ROOT)
    print("exported nbs/ to the package, with the job notebooks")
