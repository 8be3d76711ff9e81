"""A loopback HTTP server with scripted faults, shared by the download tests and the online-loader tests
(real download code, tested against local files: no network)."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import threading
import time


class FaultyServer:
    """Serves `files` (name -> bytes). `faults[name]` is a list of faults consumed one per request:
    "drop" (send 40% of the body, then close), "500", "corrupt" (garbage of the same length), "404",
    "flip" (one byte flipped mid-file: the parquet footer still reads), "badrange" (a 206 from byte 0
    whatever the Range asked, saying so in Content-Range), "trickle" (one byte every 0.5 s, 40 at most);
    `ignore_range` serves 200 + the whole file whatever the Range; `delay` sleeps per 16 KiB block;
    `etags[name]` is sent as the ETag; `linked` answers like Hugging Face's /resolve/: a 302 to /cdn/<name>
    carrying X-Linked-Size and X-Linked-Etag (the file's sha256). `log` has the file requests (not the 302s)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.faults, self.log, self.etags = files, {}, [], {}
        self.ignore_range, self.delay, self.linked = False, 0.0, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                if outer.linked and not name.startswith("cdn/"):
                    return self.redirect(name)
                name = name.removeprefix("cdn/")
                fault = outer.faults.get(name, []).pop(0) if outer.faults.get(name) else None
                rng = self.headers.get("Range")
                outer.log.append((name, rng, fault))
                if name not in outer.files or fault == "404":
                    self.send_error(404)
                    return
                if fault == "500":
                    self.send_error(500)
                    return
                body = outer.files[name]
                if fault == "corrupt":
                    body = bytes(random.Random(1).randrange(256) for _ in range(len(body)))
                if fault == "flip":
                    body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
                start = 0
                if rng and not outer.ignore_range:
                    start = 0 if fault == "badrange" else int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                if name in outer.etags:
                    self.send_header("ETag", outer.etags[name])
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(payload[: int(len(payload) * 0.4)])
                    self.wfile.flush()
                    self.connection.close()
                    return
                if fault == "trickle":
                    with contextlib.suppress(OSError):  # the client hangs up at its deadline
                        for i in range(40):
                            self.wfile.write(payload[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.5)
                    return
                for i in range(0, len(payload), 16384):
                    self.wfile.write(payload[i:i + 16384])
                    if outer.delay:
                        time.sleep(outer.delay)

            def redirect(self, name):
                self.send_response(302)
                self.send_header("Location", f"/cdn/{name}")
                if name in outer.files:
                    self.send_header("X-Linked-Size", str(len(outer.files[name])))
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(outer.files[name]).hexdigest()}"')
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
