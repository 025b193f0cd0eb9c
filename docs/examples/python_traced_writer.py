#!/usr/bin/env python3
"""A traced write from Python: the request's trace continues through the outbox.

    OUTBOX_POSTGRES_URL=postgresql://... python docs/examples/python_traced_writer.py STREAM

Inside a span, writes one event whose headers carry the span's W3C `traceparent` (put there by
`opentelemetry.propagate.inject`, as for an outgoing HTTP request). outbox-relay continues that
trace: its span for the delivery is a child of this one, and the stream entry it appends carries a
`traceparent` field naming the same trace. Prints "<trace id> <span id>" of the writer's span.

Your application sets up its own TracerProvider and exporter; the SDK's default provider here
records spans without exporting them, which is enough for the ids.
"""
import os
import sys

import psycopg
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from psycopg.types.json import Jsonb

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("outbox-example")


def write_traced_event(conn: psycopg.Connection, stream: str) -> trace.SpanContext:
    with tracer.start_as_current_span("checkout") as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # {"traceparent": "00-<trace id>-<span id>-01"}, and tracestate if any
        with conn.transaction():
            conn.execute(
                "SELECT outbox.enqueue(%s, %s, %s, %s, %s)",
                ("redis", "xadd", "order-42", Jsonb({"stream": stream, "fields": {"order": "42"}}), Jsonb(headers)),
            )
        return span.get_span_context()


def main() -> int:
    url = os.environ.get("OUTBOX_POSTGRES_URL")
    if not url:
        print('OUTBOX_POSTGRES_URL is not set (try: eval "$(scripts/services env)")', file=sys.stderr)
        return 2
    stream = sys.argv[1] if len(sys.argv) > 1 else "orders:events"
    with psycopg.connect(url) as conn:
        context = write_traced_event(conn, stream)
    print(f"{context.trace_id:032x} {context.span_id:016x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
