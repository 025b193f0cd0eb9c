#!/usr/bin/env python3
"""Writing to the outbox from Python (psycopg 3): the domain row and its events in ONE transaction.

    OUTBOX_POSTGRES_URL=postgresql://... python docs/examples/python_writer.py "some extracted text"

Prints the new extraction's id. If anything fails before COMMIT, neither the row nor its events
exist; once COMMIT returns, outbox-relay delivers the events (at least once, in per-key order).
"""
import os
import sys
import uuid

import psycopg
from psycopg.types.json import Jsonb


def write_extraction(conn: psycopg.Connection, source_id: str, content: str) -> uuid.UUID:
    row_id = uuid.uuid4()
    with conn.transaction():  # BEGIN ... COMMIT, or ROLLBACK on any exception
        conn.execute(
            "INSERT INTO extractions (id, source_id, content) VALUES (%s, %s, %s)",
            (row_id, source_id, content),
        )
        # Mirror into Qdrant: the relay embeds `text` and, because of `source`, sets
        # extractions.embedding_id to the point id when Qdrant confirms the upsert.
        conn.execute(
            "SELECT outbox.enqueue(%s, %s, %s, %s)",
            ("qdrant", "upsert", str(row_id), Jsonb({
                "collection": "extractions",
                "id": str(row_id),
                "text": content,
                "payload": {"source_id": source_id},
                "source": {"table": "extractions", "id": str(row_id)},
            })),
        )
        # Announce it on a Redis stream; the relay adds the field `outbox_id` and appends once.
        conn.execute(
            "SELECT outbox.enqueue(%s, %s, %s, %s)",
            ("redis", "xadd", source_id, Jsonb({
                "stream": "extractions:events",
                "fields": {"extraction_id": str(row_id)},
            })),
        )
    return row_id


def main() -> int:
    url = os.environ.get("OUTBOX_POSTGRES_URL")
    if not url:
        print('OUTBOX_POSTGRES_URL is not set (try: eval "$(scripts/services env)")', file=sys.stderr)
        return 2
    content = sys.argv[1] if len(sys.argv) > 1 else "Hello from the Python writer."
    with psycopg.connect(url) as conn:
        try:
            print(write_extraction(conn, "python-example", content))
        except psycopg.errors.InvalidParameterValue as e:
            # outbox.enqueue rejects bad events with SQLSTATE 22023 and a message naming the field.
            print(f"rejected: {e.diag.message_primary}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
