#!/usr/bin/env python3
"""A reverse proxy that records each request's trace headers, for the tracing tests.

    header_recorder.py PORT UPSTREAM FILE

Forwards every request to UPSTREAM (http://host:port) as it is and answers with the upstream's
reply; appends {"method", "path", "traceparent", "tracestate"} per request as one JSON line to
FILE ("" for a header the request did not carry). Prints "ready" once listening.
"""
import http.client
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(self.server.record, "a") as f:
            f.write(json.dumps({
                "method": self.command, "path": self.path,
                "traceparent": self.headers.get("traceparent", ""), "tracestate": self.headers.get("tracestate", ""),
            }) + "\n")
        upstream = urllib.parse.urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = forward


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.upstream = sys.argv[2]
server.record = sys.argv[3]
open(server.record, "w").close()
print("ready", flush=True)
server.serve_forever()
