from __future__ import annotations

from collections.abc import Iterator

import pytest

from contextlab.state import StateStore


@pytest.fixture
def store(tmp_path) -> Iterator[StateStore]:
    """A migrated control-plane store in a fresh SQLite file."""
    state = StateStore(f"sqlite:///{tmp_path / 's.db'}")
    state.migrate()
    yield state
    state.close()
