"""Cross-origin access for browser apps (SMART apps served from their own origin), from FHIR_CORS_ORIGINS."""

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from fhir_server.settings import Settings

# Headers a browser app may read from a response: where a created resource is, its version, why a token was
# refused, how long to wait.
EXPOSED_HEADERS = ["Location", "Content-Location", "ETag", "Last-Modified", "WWW-Authenticate", "Retry-After",
                   "X-Request-Id"]


def with_cors(app: ASGIApp, settings: Settings) -> ASGIApp:
    """`app` answering CORS preflights and tagging responses for the allowed origins; unchanged without any.

    Bearer tokens are not ambient like cookies, so responses are shared without credentials
    (`Access-Control-Allow-Credentials` stays off) and any origin may be allowed with `*`.
    """
    if not settings.cors_origins:
        return app
    return CORSMiddleware(app, allow_origins=settings.cors_origins, allow_headers=["*"],
                          allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                          expose_headers=EXPOSED_HEADERS, max_age=600)
