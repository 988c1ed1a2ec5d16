"""Fixtures of the attn_sink tests (helpers live in helpers.py)."""
from __future__ import annotations

import pytest

from longlive_plugins.attn_sink.tests.helpers import debug_model


@pytest.fixture(scope="module")
def model():
    return debug_model()
