"""The error of the OAuth endpoints: an RFC 6749 `error` code with a description that is safe to show."""

from dataclasses import dataclass


@dataclass(slots=True)
class OAuthError(Exception):
    error: str
    description: str
    status: int = 400
    retry_after: int | None = None
    """Seconds, for a 429."""

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"


def invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)
