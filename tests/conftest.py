"""Shared fixtures. Set CYCLEQD_REQUIRE_ALL=1 (CI does) to turn skips for missing
system tools (MariaDB, bubblewrap, Chromium) into failures."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.tiny_models import make_family


def require_tool(*names: str) -> str:
    """Return the first tool found on PATH; skip (or fail in CI) when none is."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"none of {names} is installed"
    if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
        pytest.fail(message + " (CYCLEQD_REQUIRE_ALL=1)")
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the SVD/fingerprint cache of test runs out of the user's home."""
    if "CYCLEQD_CACHE" not in os.environ:
        os.environ["CYCLEQD_CACHE"] = str(tmp_path_factory.mktemp("cycleqd-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """A tiny random Llama base and three experts fine-tuned from it (on disk)."""
    root = tmp_path_factory.mktemp("family")
    return make_family(root, n_experts=3)


@pytest.fixture(scope="session")
def shared_data():
    """Real benchmark data (AgentBench, MBPP), read from where it lies, never copied.

    ``CYCLEQD_TEST_DATA`` names the folder; by default the ``shared/data`` folder
    beside the repository checkout.
    """
    from pathlib import Path

    root = Path(
        os.environ.get("CYCLEQD_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    if not root.is_dir():
        if os.environ.get("CYCLEQD_REQUIRE_ALL") == "1":
            pytest.fail(f"benchmark data folder {root} is missing")
        pytest.skip(f"benchmark data folder {root} is missing (set CYCLEQD_TEST_DATA)")
    return root
