"""A tiny replica: `python tests/servers/echo.py [--port N]` (port from PORT when not given).

GET any path answers 200 with JSON {"replica_id", "port", "argv", "env"}; `env` holds the variables
named in the query, `?env=GREETING,PORT_9000` (null when unset). Prints "echo listening on <port>" when
it listens and one line per request; on SIGTERM prints "echo stopping" and exits 0, as a well-behaved
server does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit


class EchoHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = parse_qs(urlsplit(self.path).query)
        names = ",".join(query.get("env", [])).split(",")
        body = json.dumps(
            {
                "replica_id": os.environ.get("BERTH_REPLICA_ID"),
                "port": self.connection.getsockname()[1],
                "argv": sys.argv[1:],
                "env": {name: os.environ.get(name) for name in names if name},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's signature
        print(f"echo request {self.command} {self.path}", flush=True)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    print("echo stopping", flush=True)
    sys.exit(0)


def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    signal.signal(signal.SIGTERM, _stop)
    print(f"echo listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
