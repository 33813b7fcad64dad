"""What a user sees when the compiled extension is missing or broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

BROKEN_EXTENSION = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "rnnkern._C":
                raise ImportError("simulated: undefined symbol _ZN3c10...")
            return None

    sys.meta_path.insert(0, NoExtension())
    try:
        import rnnkern
    except ImportError as error:
        print(error)
    else:
        print("imported")
    """
)


def test_import_without_the_extension_says_how_to_build_it():
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_EXTENSION], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "imported" not in message
    assert "rnnkern._C could not be loaded" in message
    assert "simulated: undefined symbol" in message  # the cause is kept
    assert "pip install --no-build-isolation -e ." in message


def test_import_of_an_unbuilt_checkout_says_only_to_build(tmp_path):
    # The package as a fresh clone has it: no compiled extension next to it.
    shutil.copytree(ROOT / "rnnkern", tmp_path / "rnnkern", ignore=shutil.ignore_patterns("_C*"))
    result = subprocess.run(
        [sys.executable, "-c", "import rnnkern"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ImportError: rnnkern: its compiled extension rnnkern._C is not built" in result.stderr
    assert "circular import" not in result.stderr, result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr
