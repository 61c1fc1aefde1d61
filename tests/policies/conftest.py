from __future__ import annotations

import pytest
from helpers import make_tiny_config

from policies import PolicyConfig


@pytest.fixture
def tiny_config() -> PolicyConfig:
    return make_tiny_config()
