"""The HTML pages of the authorization endpoint: login, consent (with a patient picker) and errors."""

from html import escape

from fastapi.responses import HTMLResponse

from fhir_server.auth.scopes import parse_scopes

# No scripts, no framing (clickjacking of the consent button), nothing loaded from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem} label{display:block;margin:.6rem 0} input[type=text],input[type=password]{width:100%;padding:.4rem}
.error{color:#a00} .scopes li{margin:.3rem 0} button{padding:.4rem 1rem;margin-right:.5rem}
fieldset{border:1px solid #ccc;margin:1rem 0} code{font-size:.85rem;color:#555}
"""

_ACTIONS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_CONTEXTS = {"patient": "of the selected patient", "user": "that you can access",
             "system": "on the whole server"}
_SPECIAL_SCOPES = {
    "openid": "Know who you are (OpenID Connect)",
    "fhirUser": "Know your FHIR user record",
    "profile": "Know your profile",
    "launch": "Receive the context of this launch from the EHR",
    "launch/patient": "Know the patient you select",
    "launch/encounter": "Know the current encounter",
    "offline_access": "Keep access when you are not using it (until you revoke it)",
    "online_access": "Keep access while you are signed in",
}


def describe_scope(scope: str) -> str:
    """A plain-language line for the consent page."""
    if scope in _SPECIAL_SCOPES:
        return _SPECIAL_SCOPES[scope]
    parsed = parse_scopes([scope])
    if not parsed:
        return scope
    grant = parsed[0]
    names = [name for letter, name in _ACTIONS.items() if letter in grant.permissions]
    actions = " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
    what = "all record types" if grant.resource_type == "*" else f"{grant.resource_type} records"
    limited = f" matching {scope.partition('?')[2]}" if grant.filters else ""
    return f"{actions.capitalize()} {what}{limited} {_CONTEXTS[grant.context]}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body>{body}</body></html>")
    return HTMLResponse(html, status, headers=SECURITY_HEADERS)


def _error_line(error: str | None) -> str:
    return f'<p class="error" role="alert">{escape(error)}</p>' if error else ""


def login_page(action: str, form_token: str, client_name: str, error: str | None = None,
               username: str = "", retry_after: int | None = None) -> HTMLResponse:
    """`retry_after`: sign-ins are throttled for that many seconds (429)."""
    page = _page("Sign in", f"""
<h1>Sign in</h1>
<p><strong>{escape(client_name)}</strong> asks to use this FHIR server on your behalf.</p>
{_error_line(error)}
<form method="post" action="{escape(action)}">
<input type="hidden" name="form_token" value="{escape(form_token)}">
<label>User name
<input type="text" name="username" value="{escape(username)}" autocomplete="username" required autofocus></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>""", 429 if retry_after else 401 if error else 200)
    if retry_after:
        page.headers["Retry-After"] = str(retry_after)
    return page


def consent_page(action: str, form_token: str, client_name: str, username: str, scopes: tuple[str, ...],
                 patient_label: str | None, patients: list[tuple[str, str]] | None, name_filter: str = "",
                 error: str | None = None) -> HTMLResponse:
    """`patient_label`: the patient context already fixed; `patients`: choices when the user must pick one."""
    items = "".join(
        f'<li><label><input type="checkbox" name="scope" value="{escape(scope)}" checked> '
        f"{escape(describe_scope(scope))} <code>{escape(scope)}</code></label></li>" for scope in scopes)
    patient_part = ""
    if patient_label is not None:
        patient_part = f"<p>Patient: <strong>{escape(patient_label)}</strong></p>"
    elif patients is not None:
        choices = "".join(
            f'<label><input type="radio" name="patient" value="{escape(pid)}"{" checked" if i == 0 else ""}> '
            f"{escape(name)} <code>Patient/{escape(pid)}</code></label>" for i, (pid, name) in enumerate(patients))
        patient_part = f"""<fieldset><legend>Patient</legend>
<label>Name <input type="text" name="name" value="{escape(name_filter)}"></label>
<button type="submit" name="action" value="search" formnovalidate>Find</button>
{choices or "<p>No patient found.</p>"}</fieldset>"""
    return _page("Allow access", f"""
<h1>Allow access?</h1>
<p>Signed in as <strong>{escape(username)}</strong>. <strong>{escape(client_name)}</strong> asks to:</p>
{_error_line(error)}
<form method="post" action="{escape(action)}">
<input type="hidden" name="form_token" value="{escape(form_token)}">
<ul class="scopes">{items}</ul>
{patient_part}
<button type="submit" name="action" value="approve">Allow</button>
<button type="submit" name="action" value="deny">Deny</button>
</form>""")


def error_page(message: str, status: int = 400) -> HTMLResponse:
    return _page("Authorization error", f"<h1>Authorization error</h1>{_error_line(message)}", status)
