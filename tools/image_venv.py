"""Make the serving image's virtualenv smaller and its cold start faster (the Dockerfile's build stage runs it).

    python tools/image_venv.py slim VENV   after the dependencies are installed
    python tools/image_venv.py warm VENV   after mlprod itself is installed (last step)

`slim` removes what serving never loads:
- every `tests/` folder of the installed libraries (~170 MB for numpy, scipy, pandas, scikit-learn, pyarrow):
  no library imports its own test suite (their helpers live in `testing`/`_testing`, which stay);
- C/Cython headers and sources (`include/`, `*.pxd`, `*.pyx`, `*.h`, ...) and type stubs (`*.pyi`): only needed to
  compile or type-check against a library;
- pyarrow's Flight and S3 libraries (~55 MB): serving reads Parquet files; pyarrow loads these only when asked
  (`pyarrow.flight`, `pyarrow.fs.S3FileSystem`) and reports them as missing otherwise;
- the symbol tables of the compiled libraries (`strip --strip-unneeded`, when binutils is installed, ~50 MB: pyarrow,
  OpenBLAS and numpy ship theirs): the dynamic symbols that loading needs stay, only debuggers miss the rest;
- copies of the same file (pyarrow's libarrow_python under three names, the Fortran runtime in both numpy.libs and
  scipy.libs): hard links instead, which an image layer stores once;
and compiles scikit-learn whole to `.pyc` (a pickled model may name any estimator): the image runs as a user who
cannot write `.pyc` files, so whatever is not compiled here is compiled again at every start.

What is left (measured 2026-12-01, podman, default EXTRAS): the image is 506 MB, the base 128 MB of it. The venv's
largest parts are pyarrow (83 MB after the above), scipy with its OpenBLAS (96 MB), pandas (38 MB), scikit-learn
(31 MB), numpy with its OpenBLAS (52 MB), gRPC (19 MB) and `.pyc` files (50 MB). Those `.pyc` files pay for
themselves: importing the bundle, pandas, scikit-learn and gcsfs takes 2.4-2.5 s with them and 4.9-5.3 s without, so
a gs:// bundle or the batch path would miss the 3 s cold start. Under 400 MB needs decisions beyond this file
(measured on the branch image-lean-experiment: 397 MB, the image tests pass):
- pyarrow out of the serving image, fastparquet (with cramjam, ~6 MB) in: serving reads Parquet only for a bundle's
  lookup tables (when the spec loads), the docs' example and reference data, and pandas picks fastparquet when
  pyarrow is absent (the lookup maps built from both readers were identical on a table with missing keys, NaN,
  nullable integers and booleans); mlprod's requirements name pyarrow, so settings.ini would move it out of the core;
- gcsfs 2025.9 with fsspec 2025.9 (constraints.txt has 2026.10 and 2026.9): later gcsfs requires
  google-cloud-storage-control, hence gRPC (2025.12 does; 2025.10 not checked), and from 2026.5 on it imports
  google-cloud-storage's gRPC client when it is imported, so gRPC cannot simply be removed after installing (with
  both at 2025.9 the tests of bundle_remote, data, registry, imports, predict, faults and serving passed);
- scikit-learn compiled through the estimators mlprod pickles instead of whole (4.8 MB of `.pyc` instead of 8.5).

`warm` imports what a request touches (the CLI that starts the server, the API, bundle loading and the numeric
stack under it), which writes their `.pyc` files, checks the installed set (`pip check`) and removes pip,
setuptools and wheel: nothing is installed at run time.
"""
import compileall
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PYARROW_UNUSED = ("libarrow_flight.so*", "libarrow_python_flight.so*", "_flight.*.so", "libarrow_s3.so*", "_s3fs.*.so")
SOURCES = ("*.pxd", "*.pyx", "*.pxi", "*.h", "*.hpp", "*.c", "*.cpp", "*.pyi")
WARM_UP = """
import mlprod.cli, mlprod.api, mlprod.bundle, mlprod.models, mlprod.transforms, mlprod.fastpath
mlprod.cli.build_parser()
import numpy, pandas, scipy.sparse, pyarrow.parquet, joblib, fsspec, gcsfs
import gunicorn.app.base, gunicorn.workers.sync, gunicorn.workers.gthread
"""


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def remove(paths) -> None:
    for p in list(paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def strip_libraries(site: Path) -> None:
    "Remove the symbol tables of the shared libraries (binutils' strip; skipped when it is not installed)."
    strip = shutil.which("strip")
    if strip is None:
        print("image_venv slim: no `strip` (binutils): shared libraries keep their symbol tables")
        return
    # Not the libraries auditwheel grafted into `<package>.libs/`: patchelf rewrote their headers, and strip turns
    # those into files the loader refuses ("ELF load command address/offset not page-aligned", numpy's OpenBLAS).
    libs = [str(p) for p in site.rglob("*.so*")
            if p.is_file() and not p.is_symlink() and not p.parent.name.endswith(".libs")]
    for i in range(0, len(libs), 200):
        subprocess.run([strip, "--strip-unneeded", *libs[i:i + 200]], check=True)


def link_duplicates(site: Path) -> None:
    "Replace each further copy of a file (same size and bytes) by a hard link to the first."
    seen = {}
    for p in sorted(site.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.stat().st_size < 64 * 1024:
            continue
        key = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        if key in seen:
            tmp = p.with_name(p.name + ".link")
            os.link(seen[key], tmp)
            os.replace(tmp, p)
        else:
            seen[key] = p


def slim(venv: Path) -> None:
    site = next(venv.glob("lib/python3*/site-packages"))
    remove(p for p in site.rglob("tests") if p.is_dir())
    remove(p for p in site.rglob("include") if p.is_dir() and p.parent.name in ("pyarrow", "_core"))
    remove(p for pattern in SOURCES for p in site.rglob(pattern))
    remove(p for pattern in PYARROW_UNUSED for p in (site / "pyarrow").glob(pattern))
    remove(site.rglob("__pycache__"))
    strip_libraries(site)
    link_duplicates(site)
    compileall.compile_dir(site / "sklearn", quiet=1, workers=0)


def warm(venv: Path) -> None:
    python = str(venv / "bin" / "python")
    # From /, so that the import finds the installed package, not a source folder in the working directory.
    subprocess.run([python, "-c", WARM_UP], check=True, cwd="/")
    subprocess.run([python, "-m", "pip", "check"], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools", "wheel"], check=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("slim", "warm"):
        sys.exit(__doc__)
    venv = Path(sys.argv[2])
    before = size_mb(venv)
    {"slim": slim, "warm": warm}[sys.argv[1]](venv)
    print(f"image_venv {sys.argv[1]}: {venv} {before:.0f} MB -> {size_mb(venv):.0f} MB")
