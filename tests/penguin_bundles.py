"""Real penguin bundles for the deployment tests, each built once per test session and shared by the test modules.

They are read-only: a test that changes, signs or tampers with one works on a copy (`copy_of`)."""
import shutil
from pathlib import Path

from mlprod.testing import example_bundle


def penguin_bundle(rounds: int) -> Path:
    "A gradient-boosted penguin classifier with `rounds` rounds: each `rounds` is another version."
    return Path(example_bundle("penguins", n=None, max_iter=rounds))  # cached by mlprod.testing


def copy_of(rounds: int, dest: Path) -> Path:
    "A copy of `penguin_bundle(rounds)` at `dest`, to change."
    shutil.copytree(penguin_bundle(rounds), dest)
    return dest
