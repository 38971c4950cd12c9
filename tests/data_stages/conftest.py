"""Fixtures of the data-stage tests: a scripted OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class ScriptedLlmServer:
    """Serves ``POST /v1/chat/completions`` from a script of ``(status, body)`` replies.

    ``body`` is a ``str`` sent verbatim as the message content (status 200, wrapped in a chat-completion
    envelope), or ``("raw", text)`` sent as the whole HTTP body. When the script runs out the last reply
    repeats. Every request's JSON payload and headers are recorded.
    """

    def __init__(self) -> None:
        self.replies: list[tuple[int, object]] = []
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(payload)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": "not found"}}))
                    return
                idx = min(len(server.requests) - 1, len(server.replies) - 1)
                status, body = server.replies[idx] if server.replies else (500, "no script")
                if isinstance(body, tuple) and body[0] == "raw":
                    self._send(status, body[1])
                    return
                if status != 200:
                    self._send(status, json.dumps({"error": {"message": str(body)}}))
                    return
                envelope = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": payload.get("model", "m"),
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": body}}
                    ],
                }
                self._send(200, json.dumps(envelope))

            def _send(self, status: int, text: str) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def script(self, *replies: tuple[int, object]) -> None:
        self.replies = list(replies)


@pytest.fixture
def llm_server() -> Iterator[ScriptedLlmServer]:
    server = ScriptedLlmServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def prompts_json(*prompts: object) -> str:
    """A well-formed reply body."""
    return json.dumps({"prompts": list(prompts)})
