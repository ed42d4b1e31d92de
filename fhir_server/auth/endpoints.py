"""The URLs of the authorization server, built from the request's own scheme and host."""

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from fhir_server.settings import Settings

AUTH_PREFIX = "/auth"


class AuthHost(Protocol):
    """What the auth routes need from the application: its settings and (once started) its pool."""

    settings: Settings
    pool: AsyncConnectionPool | None


@dataclass(frozen=True, slots=True)
class Endpoints:
    origin: str
    fhir_base: str

    @property
    def issuer(self) -> str:
        """Tokens are issued by, and for, the FHIR base URL (`iss` = `aud`)."""
        return self.fhir_base

    def at(self, name: str) -> str:
        return f"{self.origin}{AUTH_PREFIX}/{name}"


def endpoints(request: Request, settings: Settings) -> Endpoints:
    origin = f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"
    return Endpoints(origin, origin + settings.base_path)
