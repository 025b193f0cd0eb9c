#!/usr/bin/env python3
"""A TCP relay put between outbox-relay and Postgres by the integration tests and outbox-bench.

    pg-wire-proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT [COUNT_FILE]

Killing it makes Postgres unreachable for the relay exactly as a stopped server would (open
connections reset, new ones refused) while the shared test server keeps serving other tests.
With COUNT_FILE it also counts the statements clients send (simple-protocol Query messages and
extended-protocol Sync messages, i.e. one per PQexec/PQexecParams round trip) and keeps the
running total in that file. Prints "ready" once listening.
"""
import socket
import struct
import sys
import threading

count_lock = threading.Lock()
count = 0


def add_statements(n, count_file):
    global count
    with count_lock:
        count += n
        with open(count_file, "w") as f:
            f.write(str(count))


class FrontendCounter:
    """Follows the client->server byte stream message by message (startup packets have no type byte)."""

    def __init__(self, count_file):
        self.count_file = count_file
        self.buffer = b""
        self.started = False

    def feed(self, data):
        self.buffer += data
        statements = 0
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    break
                self.buffer = self.buffer[length:]
                if code not in (80877103, 80877104):  # SSLRequest / GSSENCRequest: startup follows
                    self.started = True
                continue
            if len(self.buffer) < 5:
                break
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            self.buffer = self.buffer[1 + length:]
            if kind in (b"Q", b"S"):
                statements += 1
        if statements:
            add_statements(statements, self.count_file)


def pump(src, dst, counter=None):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if counter:
                counter.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    port, host, target = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    count_file = sys.argv[4] if len(sys.argv) > 4 else None
    if count_file:
        add_statements(0, count_file)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((host, target))
        except OSError:
            client.close()
            continue
        counter = FrontendCounter(count_file) if count_file else None
        threading.Thread(target=pump, args=(client, upstream, counter), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    main()
