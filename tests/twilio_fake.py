"""A local HTTP server that speaks Twilio's Messages API, for the real `twilio` client to talk to."""

import base64
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl

from tests.local_http import LocalAPI

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token"


class FakeTwilio(LocalAPI):
    """POST /2010-04-01/Accounts/{sid}/Messages.json with basic auth; answers like Twilio (201 + sid/status).

    `failures` are HTTP statuses to answer, one per request, before succeeding; `hang` makes the next
    request wait (after being recorded) until `release()`. `messages` lists every accepted request's form.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.requests = 0
        self.failures: list[int] = []
        self.hang = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        super().__init__()

    def stop(self) -> None:
        self.release()
        super().stop()

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.requests = 0
            self.failures.clear()
            self.hang = False
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if handler.path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
            return self._answer(handler, 404, {"code": 20404, "message": "The requested resource was not found",
                                               "status": 404})
        if handler.headers.get("Authorization") != expected:
            return self._answer(handler, 401, {"code": 20003, "message": "Authenticate", "status": 401})
        form = dict(parse_qsl(handler.rfile.read(int(handler.headers["Content-Length"])).decode()))
        with self._lock:
            self.requests += 1
            failure = self.failures.pop(0) if self.failures else None
            hang = self.hang
            if failure is None:
                self.messages.append(form)
        if failure is not None:
            code = 21211 if failure == 400 else 20500
            return self._answer(handler, failure, {"code": code, "message": f"Fake failure {failure}",
                                                   "more_info": f"https://www.twilio.com/docs/errors/{code}",
                                                   "status": failure})
        if hang:
            self._released.wait(60)
        sid = "SM" + uuid.uuid4().hex
        self._answer(handler, 201, {
            "sid": sid, "account_sid": ACCOUNT_SID, "to": form.get("To"), "from": form.get("From"),
            "body": form.get("Body"), "status": "queued", "num_segments": "1", "direction": "outbound-api",
            "api_version": "2010-04-01", "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        })
