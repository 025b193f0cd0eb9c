#!/usr/bin/env python3
"""A stand-in for an OpenAI-compatible embeddings API, for the embedder's tests.

    fake_embeddings.py PORT API_KEY

POST /v1/embeddings {"model", "input": [...], "dimensions": N} -> one deterministic vector per
input. Inputs steer failures: "please-429" -> 429 with Retry-After: 2, "please-400" -> 400,
"please-500" -> 500, "please-wrong-dims" -> vectors one longer than asked. A wrong bearer token -> 401. Prints "ready" once listening.
"""
import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/embeddings":
            return self.reply(404, {"error": {"message": "not found"}})
        if self.headers.get("Authorization") != "Bearer " + self.server.api_key:
            return self.reply(401, {"error": {"message": "bad key"}})
        inputs = body.get("input", [])
        if "please-429" in inputs:
            return self.reply(429, {"error": {"message": "slow down"}}, [("Retry-After", "2")])
        if "please-400" in inputs:
            return self.reply(400, {"error": {"message": "input too long"}})
        if "please-500" in inputs:
            return self.reply(500, {"error": {"message": "boom"}})
        dims = int(body.get("dimensions", 8)) + (1 if "please-wrong-dims" in inputs else 0)
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            data.append({"object": "embedding", "index": i,
                         "embedding": [digest[j % len(digest)] / 255.0 for j in range(dims)]})
        self.reply(200, {"object": "list", "data": data, "model": body.get("model")})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.api_key = sys.argv[2]
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
