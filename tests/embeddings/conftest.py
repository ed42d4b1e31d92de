"""The local OpenAI-compatible embeddings server, started once and emptied for each test."""

from collections.abc import Iterator

import pytest

from tests.openai_fake import FakeOpenAI


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def openai_fake(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.reset()
    return openai_server
