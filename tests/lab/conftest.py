"""The lab's tests use the engine's tiny models and the application's fixtures."""

from tests.app.conftest import FIXTURES, SHARED, builtin_tokenizer_engine, library, tiny_reader  # noqa: F401
from tests.engine.conftest import rng, tiny_config, tiny_engine  # noqa: F401
