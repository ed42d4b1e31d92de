"""The one exception type of the server: an HTTP status with the OperationOutcome issues that explain it."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.to_json() for issue in issues]}


@dataclass(slots=True)
class FHIRError(Exception):
    """Raised anywhere; turned into an OperationOutcome response in one place (`api.app`)."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, status: int, code: str, diagnostics: str, expression: str | None = None) -> "FHIRError":
        return cls(status, [Issue(code, diagnostics, expression=(expression,) if expression else ())])

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(issue.diagnostics for issue in self.issues)
