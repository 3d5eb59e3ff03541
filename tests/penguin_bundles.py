"""Real penguin bundles for the deployment tests, each built once per test session and shared by the test modules.

They are read-only: a test that changes, signs or tampers with one works on a copy (`copy_of`)."""
import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from test_api import build_bundle

_ROOT = Path(tempfile.mkdtemp(prefix="mlprod-test-bundles-"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.lru_cache(maxsize=None)
def penguin_bundle(rounds: int) -> Path:
    "A gradient-boosted penguin classifier with `rounds` rounds: each `rounds` is another version."
    return Path(build_bundle(_ROOT / f"penguins-{rounds}.bundle", "penguins", max_iter=rounds))


def copy_of(rounds: int, dest: Path) -> Path:
    "A copy of `penguin_bundle(rounds)` at `dest`, to change."
    shutil.copytree(penguin_bundle(rounds), dest)
    return dest
