#!/usr/bin/env python3
"""Records every POSTed body as one JSON line in FILE; answers 204.

    webhook_receiver.py PORT FILE
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(self.server.record, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.record = sys.argv[2]
open(server.record, "wb").close()
print("ready", flush=True)
server.serve_forever()
