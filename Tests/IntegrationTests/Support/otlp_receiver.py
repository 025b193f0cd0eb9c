#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for tests: decodes each POST /v1/traces (protobuf) with PyPI's
opentelemetry-proto and records every span as one JSON line in FILE; answers 200.

    otlp_receiver.py PORT FILE

A line: {"service", "trace_id", "span_id", "parent_span_id", "name", "kind", "attributes",
"links": [{"trace_id", "span_id"}], "status"} (ids in lower-case hex, "" when absent).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def record(request: ExportTraceServiceRequest):
    for resource_spans in request.resource_spans:
        attributes = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": attributes.get("service.name", ""),
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": Span.SpanKind.Name(span.kind),
                    "attributes": {a.key: value(a.value) for a in span.attributes},
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in span.links],
                    "status": Status.StatusCode.Name(span.status.code),
                }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with open(self.server.record, "a") as f:
            for span in record(request):
                f.write(json.dumps(span) + "\n")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.record = sys.argv[2]
open(server.record, "w").close()
print("ready", flush=True)
server.serve_forever()
