"""Building Tasks for the workflow tests."""

from typing import Any


def task(status: str = "requested", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Task", "status": status, "intent": "order", **extra}


def diagnostics(response) -> str:
    return " ".join(issue.get("diagnostics", "") for issue in response.json().get("issue", []))
