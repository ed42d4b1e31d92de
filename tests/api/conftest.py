"""An in-process server with non-default settings, over the real test database."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from fhir_server.api.app import FHIRApplication
from fhir_server.settings import get_settings


@pytest.fixture
def configured_client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """`async with configured_client(FHIR_X="1") as client:` talks to an app built with those settings."""

    @asynccontextmanager
    async def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        app = FHIRApplication(get_settings())
        try:
            async with app.lifespan(app.fastapi):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test/fhir") as client:
                    yield client
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()

    return make
