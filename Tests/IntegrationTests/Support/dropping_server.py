#!/usr/bin/env python3
"""An HTTP/1.1 server that drops the second request of every kept-alive connection unanswered.

    dropping_server.py PORT

Each request on a fresh connection gets 200 with {"received": <body length>}; the second request
on the same connection is read and then the connection closes without a reply, as a server does
when it restarts or a load balancer recycles an idle connection. A client must resend such a
request, body included, on a new connection. Prints "ready" once listening.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests = getattr(self, "requests", 0) + 1
        if self.requests == 2:
            self.close_connection = True
            return
        data = json.dumps({"received": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
