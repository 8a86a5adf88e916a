"""``fvmatch-online serve``: the built-in server (Python's ThreadingHTTPServer) for pilots and lab networks.

Serves the exported study's task files and images (nothing else: not study.json, not the stimulus tables,
whose names reveal units) and four JSON endpoints, each a method of ``online.sessions.OnlineStudy``:

    POST api/start   {params, client}                 -> the participant's trials (new or resumed) and a run number
    POST api/trial   {params, run, trial_index, clicks, assignment, onset, frames, paused_s} -> saved (fsync'd)
    POST api/event   {params, run, kind, ...}         -> calibration, focus loss, time on instructions
    POST api/finish  {params, run}                    -> completed; the completion URL

``params`` are the page's URL parameters (the participant id); ``run`` is the number the start answer gave:
only the latest opening of the link records (an older tab gets 409 and stops).

Refusals are JSON ``{"error": ...}`` with 400 (malformed), 404 (no such trial or file), 409 (replayed,
out of order, already took part), 411/413 (no or too large body), 415 (not JSON).
"""

from __future__ import annotations

import json
import mimetypes
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from online.sessions import OnlineStudy, RequestError

MAX_BODY = 64 * 1024  # a trial post is ~1 KB; anything much larger is refused unread
_STATIC = re.compile(r"^(index\.html|task\.js|task\.css|lib/[A-Za-z0-9_.-]+\.(js|css)|img/[0-9a-f]{20}\.png)$")
ROUTES = {"/api/start": "start", "/api/trial": "record_trial", "/api/event": "record_event", "/api/finish": "finish"}


def make_handler(study: OnlineStudy, quiet: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fvmatch-online"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # noqa: D401  (one line per request on stderr, unless quiet)
            if not quiet:
                sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "public, max-age=3600" if cache else "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self):  # noqa: N802
            path = unquote(urlsplit(self.path).path).lstrip("/") or "index.html"
            if not _STATIC.match(path):
                return self._json(404, {"error": f"no such file: /{path}"})
            f = study.study_dir / path
            if not f.is_file():
                return self._json(404, {"error": f"no such file: /{path}"})
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            self._send(200, f.read_bytes(), ctype + ("; charset=utf-8" if ctype.startswith("text/") or ctype.endswith("javascript") else ""),
                       cache=path.startswith("img/"))

        do_HEAD = do_GET

        def do_POST(self):  # noqa: N802
            route = ROUTES.get(urlsplit(self.path).path)
            if route is None:
                self.close_connection = True
                return self._json(404, {"error": f"no such endpoint: {self.path}"})
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                return self._json(411, {"error": "a Content-Length header is required"})
            if int(length) > MAX_BODY:
                self.close_connection = True  # the body is never read
                return self._json(413, {"error": f"body of {length} bytes is larger than {MAX_BODY}"})
            if "json" not in (self.headers.get("Content-Type") or ""):
                self.rfile.read(int(length))
                return self._json(415, {"error": "send application/json"})
            raw = self.rfile.read(int(length))
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self._json(400, {"error": f"body is not valid JSON: {e}"})
            if not isinstance(body, dict):
                return self._json(400, {"error": "body must be a JSON object"})
            try:
                result = getattr(study, route)(body)
            except RequestError as e:
                if not quiet:
                    sys.stderr.write(f"refused {route} ({e.status}): {e.message}\n")
                return self._json(e.status, {"error": e.message, **e.extra})
            except Exception as e:  # never a traceback to the client; the log has it
                sys.stderr.write(f"error in {route}: {e!r}\n")
                return self._json(500, {"error": "server error; the trial was not recorded, try again"})
            return self._json(200, result)

    return Handler


class StudyServer:
    """A running server (a background thread): ``with StudyServer(study, port=0) as s: s.url``."""

    def __init__(self, study: OnlineStudy, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
        self.httpd = ThreadingHTTPServer((host, port), make_handler(study, quiet))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> "StudyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def serve_forever(study: OnlineStudy, host: str, port: int) -> None:
    httpd = ThreadingHTTPServer((host, port), make_handler(study))
    httpd.daemon_threads = True
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


