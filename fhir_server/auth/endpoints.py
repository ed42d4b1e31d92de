"""The URLs of the authorization server, built from the request's own scheme and host."""

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from fhir_server.settings import Settings
from fhir_server.storage import tenants

AUTH_PREFIX = "/auth"


class AuthHost(Protocol):
    """What the auth routes need from the application: its settings and (once started) its pool."""

    settings: Settings
    pool: AsyncConnectionPool | None


@dataclass(frozen=True, slots=True)
class Endpoints:
    origin: str
    fhir_base: str
    auth_root: str
    """Where the authorization server's paths start: the origin, or a tenant's FHIR base."""

    @property
    def issuer(self) -> str:
        """Tokens are issued by, and for, the FHIR base URL (`iss` = `aud`)."""
        return self.fhir_base

    def at(self, name: str) -> str:
        return f"{self.auth_root}{AUTH_PREFIX}/{name}"

    def path(self, name: str) -> str:
        return urlsplit(self.at(name)).path


def endpoints(request: Request, settings: Settings) -> Endpoints:
    """Each tenant has its own authorization server, below its FHIR base."""
    origin = f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"
    return endpoints_of(origin + tenants.base_path(settings.base_path))


def endpoints_of(fhir_base: str) -> Endpoints:
    """The authorization server that serves the FHIR base `fhir_base` (a request's own base URL)."""
    parts = urlsplit(fhir_base)
    origin = f"{parts.scheme}://{parts.netloc}"
    return Endpoints(origin, fhir_base, fhir_base if tenants.current.get() is not None else origin)
