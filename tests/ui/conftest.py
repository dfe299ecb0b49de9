import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def builtin_engine():
    import engine

    return engine.load_model("builtin", device="cpu")
