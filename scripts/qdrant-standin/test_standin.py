"""Tests for qdrant-standin: they start the real server process on a free loopback port with
a temporary data directory and talk to it over HTTP (urllib; raw sockets where a test needs
control over the connection itself).

    python -m pytest scripts/qdrant-standin -q
"""
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin.py")
CONTRACT_PROXY = os.environ.get("QDRANT_CONTRACT_PROXY", "/work/shared/qdrant/contract-proxy")
BODY_LIMIT = 33554432


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

class Standin:
    """A running standin.py process."""

    def __init__(self, data_dir, *args):
        self.proc = subprocess.Popen(
            [sys.executable, STANDIN, "--host", "127.0.0.1", "--port", "0",
             "--data", str(data_dir), *args],
            stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready:
            self.proc.kill()
            pytest.fail("qdrant-standin did not report readiness within 30 s")
        line = self.proc.stdout.readline().strip()
        assert line.startswith("qdrant-standin listening on http://127.0.0.1:"), line
        self.url = line.rsplit(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.proc.stdout.close()
        assert code == 0


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.raw = status, headers, body

    @property
    def json(self):
        return json.loads(self.raw)

    @property
    def text(self):
        return self.raw.decode()

    @property
    def result(self):
        doc = self.json
        assert doc["status"] == "ok", doc
        assert isinstance(doc["time"], float)
        return doc["result"]

    @property
    def error(self):
        doc = self.json
        assert isinstance(doc["time"], float)
        return doc["status"]["error"]


def call(base, method, path, body=None, headers=None, raw_body=None, timeout=10):
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_collection(base, size=4, distance="Cosine", name=None):
    name = name or f"c_{uuid.uuid4().hex[:10]}"
    r = call(base, "PUT", f"/collections/{name}", {"vectors": {"size": size, "distance": distance}})
    assert r.status == 200 and r.result is True, r.raw
    return name


def upsert(base, name, points, wait=True):
    r = call(base, "PUT", f"/collections/{name}/points?wait={str(wait).lower()}", {"points": points})
    assert r.status == 200, r.raw
    return r.result


def vec(i, size=4):
    return [float(i + 1)] + [1.0] * (size - 1)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Standin(tmp_path_factory.mktemp("data"))
    yield s
    s.stop()


@pytest.fixture
def base(server):
    yield server.url
    call(server.url, "DELETE", "/__standin/faults")  # never leak a fault into the next test


class ContractProxy:
    """/work/shared/qdrant/contract-proxy in front of a stand-in: it validates every exchange
    against Qdrant's OpenAPI spec and lists what broke it."""

    def __init__(self, upstream, log):
        import openapi_schema_validator  # noqa: F401  (the proxy needs it; CI installs it)

        assert os.path.exists(CONTRACT_PROXY), f"contract proxy not found at {CONTRACT_PROXY}"
        port = free_port()
        self.proc = subprocess.Popen([sys.executable, CONTRACT_PROXY, "--listen", f"127.0.0.1:{port}",
                                      "--upstream", upstream, "--log", str(log)])
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                call(self.url, "GET", "/__contract/violations", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and self.proc.poll() is None, "proxy did not start"
                time.sleep(0.1)

    def report(self):
        return call(self.url, "GET", "/__contract/violations").json

    def violations(self):
        return self.report()["violations"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    p = ContractProxy(server.url, tmp_path_factory.mktemp("contract") / "violations.jsonl")
    yield p
    p.stop()


# --------------------------------------------------------------------------------------------
# service and collections
# --------------------------------------------------------------------------------------------

def test_service_endpoints(base):
    r = call(base, "GET", "/")
    assert r.status == 200 and r.json["title"] == "qdrant - vector search engine"
    assert r.json["version"].startswith("1.")
    for path, text in (("/healthz", "healthz check passed"), ("/livez", "healthz check passed"),
                       ("/readyz", "all shards are ready")):
        r = call(base, "GET", path)
        assert r.status == 200 and r.text == text
        assert r.headers["Content-Type"].startswith("text/plain")
    r = call(base, "GET", "/no/such/route")
    assert r.status == 404 and "error" in r.json["status"]


def test_collection_lifecycle(base):
    name = new_collection(base, size=4, distance="Dot")
    r = call(base, "PUT", f"/collections/{name}", {"vectors": {"size": 4, "distance": "Dot"}})
    assert r.status == 409 and r.error == f"Wrong input: Collection `{name}` already exists!"

    info = call(base, "GET", f"/collections/{name}").result
    assert info["status"] == "green" and info["optimizer_status"] == "ok"
    assert info["points_count"] == 0 and info["segments_count"] >= 1
    assert info["payload_schema"] == {}
    config = info["config"]
    assert config["params"]["vectors"] == {"size": 4, "distance": "Dot"}
    for key in ("hnsw_config", "optimizer_config", "wal_config"):
        assert isinstance(config[key], dict)
    assert config["optimizer_config"]["flush_interval_sec"] == 5

    assert call(base, "GET", f"/collections/{name}/exists").result == {"exists": True}
    names = [c["name"] for c in call(base, "GET", "/collections").result["collections"]]
    assert name in names

    assert call(base, "DELETE", f"/collections/{name}").result is True
    assert call(base, "DELETE", f"/collections/{name}").result is False
    assert call(base, "GET", f"/collections/{name}/exists").result == {"exists": False}
    r = call(base, "GET", f"/collections/{name}")
    assert r.status == 404 and r.error == f"Not found: Collection `{name}` doesn't exist!"


def test_create_collection_errors(base):
    r = call(base, "PUT", "/collections/bad", {"vectors": {"size": 4, "distance": "Hamming"}})
    assert r.status == 400 and r.error.startswith("Format error in JSON body:")
    r = call(base, "PUT", "/collections/bad", {"vectors": {"size": 0, "distance": "Dot"}})
    assert r.status == 400
    r = call(base, "PUT", "/collections/bad", {"vectors": {"size": 70000, "distance": "Dot"}})
    assert r.status == 422 and r.error.startswith("Validation error in JSON body:")
    r = call(base, "PUT", "/collections/bad%3Aname", {"vectors": {"size": 4, "distance": "Dot"}})
    assert r.status == 422 and "cannot contain" in r.error
    assert call(base, "GET", "/collections/bad/exists").result == {"exists": False}


def test_named_vectors(base):
    name = f"named_{uuid.uuid4().hex[:8]}"
    r = call(base, "PUT", f"/collections/{name}", {"vectors": {
        "text": {"size": 3, "distance": "Cosine"}, "image": {"size": 2, "distance": "Euclid"}}})
    assert r.result is True
    upsert(base, name, [{"id": 1, "vector": {"text": [1, 0, 0], "image": [0.5, 0.5]}}])
    rec = call(base, "GET", f"/collections/{name}/points/1").result
    assert rec["vector"] == {"text": [1.0, 0.0, 0.0], "image": [0.5, 0.5]}
    r = call(base, "PUT", f"/collections/{name}/points?wait=true",
             {"points": [{"id": 2, "vector": {"nope": [1, 2]}}]})
    assert r.status == 400 and r.error == "Wrong input: Not existing vector name error: nope"


# --------------------------------------------------------------------------------------------
# points
# --------------------------------------------------------------------------------------------

def test_upsert_list_and_get(base):
    name = new_collection(base)
    u = "550E8400-E29B-41D4-A716-446655440000"
    result = upsert(base, name, [
        {"id": 1, "vector": vec(1), "payload": {"a": 1, "tags": ["x", "y"]}},
        {"id": u, "vector": vec(2), "payload": {"a": 2}},
        {"id": 18446744073709551615, "vector": vec(3)},
        {"id": 1, "vector": vec(4), "payload": {"a": "last"}},  # duplicate id: last wins
    ])
    assert result["status"] == "completed" and isinstance(result["operation_id"], int)

    rec = call(base, "GET", f"/collections/{name}/points/{u.lower()}").result
    assert rec["id"] == u.lower() and rec["payload"] == {"a": 2} and len(rec["vector"]) == 4
    assert call(base, "GET", f"/collections/{name}/points/1").result["payload"] == {"a": "last"}
    assert call(base, "GET", f"/collections/{name}/points/18446744073709551615").result["payload"] == {}

    r = call(base, "GET", f"/collections/{name}/points/42")
    assert r.status == 404 and r.error == "Not found: Point with id 42 does not exists!"
    r = call(base, "GET", f"/collections/{name}/points/not-an-id")
    assert r.status == 400 and r.error == 'Wrong input: Can not recognize "not-an-id" as point id'

    got = call(base, "POST", f"/collections/{name}/points",
               {"ids": [1, u, 999], "with_payload": True, "with_vector": False}).result
    assert sorted(map(str, (p["id"] for p in got))) == sorted(["1", u.lower()])
    assert all("vector" not in p and "payload" in p for p in got)
    got = call(base, "POST", f"/collections/{name}/points",
               {"ids": [1], "with_payload": ["a"], "with_vector": True}).result
    assert got[0]["payload"] == {"a": "last"} and len(got[0]["vector"]) == 4
    got = call(base, "POST", f"/collections/{name}/points", {"ids": [1]}).result
    assert got == [{"id": 1}]  # Qdrant's defaults: no payload, no vector

    assert call(base, "GET", f"/collections/{name}").result["points_count"] == 3


def test_upsert_batch(base):
    name = new_collection(base, size=2)
    r = call(base, "PUT", f"/collections/{name}/points?wait=true&ordering=strong&timeout=5",
             {"batch": {"ids": [10, 11, 12], "vectors": [[1, 0], [0, 1], [1, 1]],
                        "payloads": [{"k": "a"}, None, {"k": "c"}]}})
    assert r.result["status"] == "completed"
    pts = call(base, "POST", f"/collections/{name}/points/scroll", {"limit": 10}).result["points"]
    assert [(p["id"], p["payload"]) for p in pts] == [(10, {"k": "a"}), (11, {}), (12, {"k": "c"})]
    r = call(base, "PUT", f"/collections/{name}/points?wait=true",
             {"batch": {"ids": [1, 2], "vectors": [[1, 0]]}})
    assert r.status == 422 and "number of ids and vectors must be equal" in r.error


def test_dimension_error(base):
    name = new_collection(base)
    r = call(base, "PUT", f"/collections/{name}/points?wait=true",
             {"points": [{"id": 1, "vector": [1, 2, 3]}]})
    assert r.status == 400
    assert r.error == "Wrong input: Vector dimension error: expected dim: 4, got 3"
    # wait=false: acknowledged, the error is only logged and nothing is stored
    r = call(base, "PUT", f"/collections/{name}/points", {"points": [{"id": 1, "vector": [1, 2, 3]}]})
    assert r.status == 200 and r.result["status"] == "acknowledged"
    assert call(base, "POST", f"/collections/{name}/points/count", {"exact": True}).result == {"count": 0}


def test_bad_requests(base):
    name = new_collection(base)
    path = f"/collections/{name}/points?wait=true"
    r = call(base, "PUT", path, raw_body=b'{"points": [')
    assert r.status == 400 and r.error.startswith("Format error in JSON body:")
    r = call(base, "PUT", path, raw_body=b'{"points": [{"id": 1, "vector": [NaN, 1, 1, 1]}]}')
    assert r.status == 400 and r.error.startswith("Format error in JSON body:")
    for bad_id in (-1, 2**64, "not-a-uuid", 1.5, True):
        r = call(base, "PUT", path, {"points": [{"id": bad_id, "vector": vec(0)}]})
        assert r.status == 400 and r.error.startswith("Format error in JSON body:"), bad_id
    r = call(base, "PUT", path, {"points": [{"id": 1, "vector": ["a", 1, 1, 1]}]})
    assert r.status == 400
    r = call(base, "PUT", path, {"nothing": []})
    assert r.status == 400
    r = call(base, "PUT", f"/collections/{name}/points?wait=maybe", {"points": []})
    assert r.status == 400 and r.error.startswith("Deserialize error in query parameters:")
    r = call(base, "PUT", f"/collections/{name}/points?ordering=fast", {"points": []})
    assert r.status == 400
    r = call(base, "POST", f"/collections/{name}/points/scroll", {"limit": 0})
    assert r.status == 422
    assert r.error == "Validation error in JSON body: [limit: value 0 invalid, must be 1 or larger]"
    r = call(base, "POST", f"/collections/{name}/points/count", raw_body=b"")
    assert r.status == 400 and r.error.startswith("Format error in JSON body: EOF")
    r = call(base, "POST", f"/collections/{name}/points/count", {"filter": {"must": [{"bogus": 1}]}})
    assert r.status == 400
    r = call(base, "POST", "/collections/missing/points/count", {})
    assert r.status == 404 and r.error == "Not found: Collection `missing` doesn't exist!"


def test_scroll_pagination_and_count(base):
    name = new_collection(base)
    upsert(base, name, [{"id": i, "vector": vec(i), "payload": {"group": i % 3, "n": i}}
                        for i in range(25)])
    seen, offset, pages = [], None, 0
    while True:
        body = {"limit": 10, "with_payload": False, "with_vector": False}
        if offset is not None:
            body["offset"] = offset
        page = call(base, "POST", f"/collections/{name}/points/scroll", body).result
        pages += 1
        seen += [p["id"] for p in page["points"]]
        assert all(set(p) == {"id"} for p in page["points"])
        offset = page["next_page_offset"]
        if offset is None:
            break
    assert pages == 3 and seen == list(range(25))

    count = lambda body: call(base, "POST", f"/collections/{name}/points/count", body).result["count"]
    assert count({"exact": True}) == 25
    assert count({}) == 25
    assert count({"filter": {"must": [{"key": "group", "match": {"value": 0}}]}}) == 9
    assert count({"filter": {"must": [{"key": "n", "range": {"gte": 20}}]}}) == 5
    assert count({"filter": {"must_not": [{"has_id": [0, 1, 2]}]}}) == 22
    assert count({"filter": {"should": [{"key": "n", "match": {"any": [1, 2, 3]}}]}}) == 3

    page = call(base, "POST", f"/collections/{name}/points/scroll",
                {"limit": 100, "filter": {"must": [{"key": "group", "match": {"value": 2}}]},
                 "with_vector": True}).result
    assert [p["id"] for p in page["points"]] == list(range(2, 25, 3))
    assert page["next_page_offset"] is None and len(page["points"][0]["vector"]) == 4


def test_delete_points(base):
    name = new_collection(base)
    upsert(base, name, [{"id": i, "vector": vec(i), "payload": {"color": "red" if i < 5 else "blue"}}
                        for i in range(10)])
    ids = lambda: [p["id"] for p in call(base, "POST", f"/collections/{name}/points/scroll",
                                         {"limit": 100}).result["points"]]
    r = call(base, "POST", f"/collections/{name}/points/delete?wait=true", {"points": [0, 1, 12345]})
    assert r.result["status"] == "completed"  # a missing id is not an error
    assert ids() == list(range(2, 10))
    r = call(base, "POST", f"/collections/{name}/points/delete?wait=true",
             {"filter": {"must": [{"key": "color", "match": {"value": "red"}}]}})
    assert r.result["status"] == "completed"
    assert ids() == list(range(5, 10))
    r = call(base, "POST", f"/collections/{name}/points/delete?wait=true",
             {"filter": {"must": [{"has_id": [5, 6]}]}})
    assert ids() == [7, 8, 9]
    r = call(base, "POST", f"/collections/{name}/points/delete", {"points": [7]})
    assert r.result["status"] == "acknowledged"
    assert ids() == [8, 9]


def test_set_and_overwrite_payload(base):
    name = new_collection(base)
    upsert(base, name, [{"id": i, "vector": vec(i), "payload": {"a": i, "flag": i % 2 == 0}}
                        for i in range(4)])
    payload = lambda i: call(base, "GET", f"/collections/{name}/points/{i}").result["payload"]

    r = call(base, "POST", f"/collections/{name}/points/payload?wait=true",
             {"payload": {"b": "x"}, "points": [0, 1]})
    assert r.result["status"] == "completed"
    assert payload(0) == {"a": 0, "flag": True, "b": "x"}
    r = call(base, "POST", f"/collections/{name}/points/payload?wait=true",
             {"payload": {"even": True}, "filter": {"must": [{"key": "flag", "match": {"value": True}}]}})
    assert r.result["status"] == "completed"
    assert payload(2) == {"a": 2, "flag": True, "even": True} and "even" not in payload(3)

    r = call(base, "PUT", f"/collections/{name}/points/payload?wait=true",
             {"payload": {"only": 1}, "points": [1]})
    assert r.result["status"] == "completed"
    assert payload(1) == {"only": 1}

    r = call(base, "POST", f"/collections/{name}/points/payload?wait=true",
             {"payload": {"x": 1}, "points": [404]})
    assert r.status == 404 and r.error == "Not found: No point with id 404 found"
    r = call(base, "POST", f"/collections/{name}/points/payload", {"payload": {"x": 1}, "points": [404]})
    assert r.status == 200 and r.result["status"] == "acknowledged"
    r = call(base, "POST", f"/collections/{name}/points/payload?wait=true", {"payload": {"x": 1}})
    assert r.status == 400

    r = call(base, "POST", f"/collections/{name}/points/payload/delete?wait=true",
             {"keys": ["b"], "points": [0]})
    assert r.result["status"] == "completed" and "b" not in payload(0)
    r = call(base, "POST", f"/collections/{name}/points/payload/clear?wait=true", {"points": [0]})
    assert r.result["status"] == "completed" and payload(0) == {}


def test_payload_index(base):
    name = new_collection(base)
    upsert(base, name, [{"id": i, "vector": vec(i), "payload": {"n": i}} for i in range(5)])
    r = call(base, "PUT", f"/collections/{name}/index?wait=true",
             {"field_name": "n", "field_schema": "integer"})
    assert r.result["status"] == "completed"
    schema = call(base, "GET", f"/collections/{name}").result["payload_schema"]
    assert schema == {"n": {"data_type": "integer", "points": 5}}
    page = call(base, "POST", f"/collections/{name}/points/scroll",
                {"limit": 2, "order_by": {"key": "n", "direction": "desc"}}).result
    assert [p["id"] for p in page["points"]] == [4, 3]
    r = call(base, "DELETE", f"/collections/{name}/index/n?wait=true")
    assert r.result["status"] == "completed"
    assert call(base, "GET", f"/collections/{name}").result["payload_schema"] == {}


def test_concurrent_upserts(base):
    name = new_collection(base)
    errors = []

    def worker(k):
        try:
            for j in range(10):
                upsert(base, name, [{"id": k * 100 + j, "vector": vec(j)}], wait=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert call(base, "POST", f"/collections/{name}/points/count", {}).result["count"] == 80


# --------------------------------------------------------------------------------------------
# HTTP behaviour
# --------------------------------------------------------------------------------------------

def test_keep_alive(server, base):
    name = new_collection(base)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.connect()
    sock = conn.sock
    for method, path, body, status in (
            ("GET", "/", None, 200),
            ("PUT", f"/collections/{name}/points?wait=true",
             {"points": [{"id": 1, "vector": vec(1)}]}, 200),
            ("GET", f"/collections/{name}/points/2", None, 404),
            ("POST", f"/collections/{name}/points", b"{oops", 400),
            ("POST", f"/collections/{name}/points/count", {}, 200),
            ("GET", "/healthz", None, 200)):
        data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body))
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == status
        assert resp.getheader("Content-Length") is not None
        resp.read()
        assert conn.sock is sock  # the same connection was reused
    conn.close()


def test_body_limit(server, base):
    # a declared length over the limit is refused before the body is read
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"PUT /collections/x/points HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {BODY_LIMIT + 1}\r\n\r\n".encode() + b'{"points": [')
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["status"]["error"]
    assert error == (f"JSON payload ({BODY_LIMIT + 1} bytes) is larger than allowed "
                     f"(limit: {BODY_LIMIT} bytes).")

    # a client that sends the whole oversized body still gets the reply
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request("PUT", "/collections/x/points", body=b" " * (BODY_LIMIT + 1),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 400 and "larger than allowed" in json.loads(resp.read())["status"]["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the kernel may still reset a sender that outpaces the drain; the server is fine
    finally:
        conn.close()
    assert call(base, "GET", "/healthz").status == 200


def test_api_key(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    s = Standin(tmp_path / "data", "--api-key-file", str(key_file))
    try:
        r = call(s.url, "GET", "/collections")
        assert r.status == 401 and r.text == "Must provide an API key or an Authorization bearer token"
        r = call(s.url, "GET", "/collections", headers={"api-key": "wrong"})
        assert r.status == 401
        assert call(s.url, "GET", "/collections", headers={"api-key": "s3cret"}).status == 200
        assert call(s.url, "GET", "/collections",
                    headers={"Authorization": "Bearer s3cret"}).status == 200
        for path in ("/healthz", "/livez", "/readyz", "/__standin/stats", "/__standin/faults"):
            assert call(s.url, "GET", path).status == 200, path
    finally:
        s.stop()


# --------------------------------------------------------------------------------------------
# fault switches
# --------------------------------------------------------------------------------------------

def set_faults(base, spec):
    r = call(base, "POST", "/__standin/faults", spec)
    assert r.status == 200, r.raw
    return r.json


def test_fault_503_with_count(base):
    name = new_collection(base)
    state = set_faults(base, {"status": 503, "count": 2})
    assert state["faults"]["status"] == 503 and state["remaining"] == 2
    for _ in range(2):
        r = call(base, "GET", f"/collections/{name}")
        assert r.status == 503 and r.error.startswith("Service Unavailable:")
    assert call(base, "GET", "/__standin/faults").json["faults"] is None  # auto-cleared
    assert call(base, "GET", f"/collections/{name}").status == 200


def test_fault_500_only_on_matching_paths(base):
    name = new_collection(base)
    set_faults(base, {"status": 500, "paths": "/points/count$"})
    r = call(base, "POST", f"/collections/{name}/points/count", {})
    assert r.status == 500 and r.error.startswith("Service internal error:")
    assert call(base, "POST", f"/collections/{name}/points/scroll", {}).status == 200
    assert call(base, "DELETE", "/__standin/faults").json["faults"] is None
    assert call(base, "POST", f"/collections/{name}/points/count", {}).status == 200


def test_fault_429_retry_after(base):
    set_faults(base, {"status": 429, "retry_after": 2})
    r = call(base, "GET", "/collections")
    assert r.status == 429 and r.headers["Retry-After"] == "2"
    assert r.error.startswith("Rate limiting exceeded:")


def test_faults_skip_health_and_admin(base):
    set_faults(base, {"status": 503})
    for path in ("/healthz", "/livez", "/readyz", "/__standin/stats"):
        assert call(base, "GET", path).status == 200, path
    assert call(base, "GET", "/collections").status == 503


def test_fault_delay(base):
    set_faults(base, {"delay_ms": 300, "count": 1})
    t0 = time.monotonic()
    assert call(base, "GET", "/collections").status == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert call(base, "GET", "/collections").status == 200
    assert time.monotonic() - t0 < 0.3


def test_fault_drop(base):
    set_faults(base, {"drop": True, "count": 1})
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        call(base, "GET", "/collections")
    assert call(base, "GET", "/collections").status == 200


def test_fault_wait_timeout(base):
    name = new_collection(base)
    set_faults(base, {"wait_timeout": True, "count": 1})
    # reads and wait=false updates do not use up the fault
    assert call(base, "GET", f"/collections/{name}").status == 200
    assert upsert(base, name, [{"id": 1, "vector": vec(1)}], wait=False)["status"] == "acknowledged"
    result = upsert(base, name, [{"id": 2, "vector": vec(2)}], wait=True)
    assert result["status"] == "wait_timeout" and isinstance(result["operation_id"], int)
    # ... but the update was applied
    assert call(base, "GET", f"/collections/{name}/points/2").status == 200
    assert upsert(base, name, [{"id": 3, "vector": vec(3)}], wait=True)["status"] == "completed"


def test_fault_duration(base):
    set_faults(base, {"status": 503, "duration_s": 0.4})
    assert call(base, "GET", "/collections").status == 503
    time.sleep(0.5)
    assert call(base, "GET", "/collections").status == 200
    assert call(base, "GET", "/__standin/faults").json["faults"] is None


def test_fault_spec_validation(base):
    for spec in ({"status": 418}, {"retry_after": 1}, {"count": 2}, {"status": 503, "count": 0},
                 {"status": 503, "paths": "("}, {"stauts": 503}, [1]):
        r = call(base, "POST", "/__standin/faults", spec)
        assert r.status == 400 and "error" in r.json["status"], spec
    assert call(base, "GET", "/__standin/faults").json["faults"] is None


def test_stats(base):
    call(base, "DELETE", "/__standin/stats")
    name = new_collection(base)
    call(base, "GET", f"/collections/{name}")
    call(base, "GET", f"/collections/{name}")
    stats = call(base, "GET", "/__standin/stats").json
    assert stats["requests"]["GET /collections/{collection_name}"] == 2
    assert stats["requests"]["PUT /collections/{collection_name}"] == 1
    assert stats["total"] == 3 and stats["responses"] == {"200": 3}


# --------------------------------------------------------------------------------------------
# cluster write semantics: ordering and shard_key
# --------------------------------------------------------------------------------------------

# Every points write the spec gives `ordering` and a body with `shard_key`, with a valid body.
WRITES = [
    ("PUT", "/points", {"points": [{"id": 1, "vector": [1, 0, 0, 0]}]}),
    ("PUT", "/points", {"batch": {"ids": [2], "vectors": [[0, 1, 0, 0]]}}),
    ("POST", "/points/delete", {"points": [99]}),
    ("POST", "/points/delete", {"filter": {"must": [{"has_id": [99]}]}}),
    ("POST", "/points/payload", {"payload": {"a": 1}, "points": [1]}),
    ("PUT", "/points/payload", {"payload": {"a": 2}, "points": [1]}),
    ("POST", "/points/payload/delete", {"keys": ["a"], "points": [1]}),
    ("POST", "/points/payload/clear", {"points": [1]}),
]


def test_ordering_is_validated_on_every_write(base):
    name = new_collection(base)
    for method, path, body in WRITES:
        for ordering in ("weak", "medium", "strong"):
            r = call(base, method, f"/collections/{name}{path}?wait=true&ordering={ordering}", body)
            assert r.status == 200 and r.result["status"] == "completed", (path, ordering, r.raw)
        for bad in ("fast", "Strong", ""):
            r = call(base, method, f"/collections/{name}{path}?wait=true&ordering={bad}", body)
            assert r.status == 400, (path, bad, r.raw)
            assert r.error == (f"Deserialize error in query parameters: ordering: unknown variant `{bad}`, "
                               "expected one of `weak`, `medium`, `strong`"), r.error


def test_shard_key_is_checked_against_the_spec_and_recorded(base):
    name = new_collection(base)
    good = ["eu", 7, 0, 2**64 - 1, ["eu", 7], [], {"target": "eu", "fallback": 3}, None]
    bad = [1.5, -1, 2**64, True, {"target": "eu"}, {"fallback": "eu"}, [1.5], ["eu", None], {"a": 1}]
    for method, path, body in WRITES:
        for key in good:
            r = call(base, method, f"/collections/{name}{path}?wait=true", {**body, "shard_key": key})
            assert r.status == 200, (path, key, r.raw)
        for key in bad:
            r = call(base, method, f"/collections/{name}{path}?wait=true", {**body, "shard_key": key})
            assert r.status == 400 and r.error.startswith("Format error in JSON body: shard_key"), (path, key, r.raw)
    # The stand-in's verdicts are the spec's (ShardKeySelector, nullable in every body); the spec's
    # validator does not check uint64's upper bound, which serde does (2**64 is refused by Qdrant).
    for key in good[:-1]:
        assert spec_problems("ShardKeySelector", key) == [], key
    for key in bad:
        assert spec_problems("ShardKeySelector", key) != [] or key == 2**64, key
    # Reads take a selector too.
    for method, path, body in (("POST", "/points", {"ids": [1]}), ("POST", "/points/scroll", {}),
                               ("POST", "/points/count", {}), ("POST", "/points/query", {"query": vec(1)})):
        assert call(base, method, f"/collections/{name}{path}", {**body, "shard_key": "eu"}).status == 200
        assert call(base, method, f"/collections/{name}{path}", {**body, "shard_key": 1.5}).status == 400


def test_requests_record_ordering_and_shard_key(base):
    name = new_collection(base)
    assert call(base, "DELETE", "/__standin/requests").status == 200
    call(base, "PUT", f"/collections/{name}/points?wait=true&ordering=strong",
         {"points": [{"id": 1, "vector": vec(1)}], "shard_key": "eu"})
    call(base, "POST", f"/collections/{name}/points/delete?wait=true", {"points": [1], "shard_key": 3})
    call(base, "POST", f"/collections/{name}/points/payload?ordering=bogus", {"payload": {}, "points": [1]})
    call(base, "POST", f"/collections/{name}/points/scroll", {"limit": 1})
    call(base, "GET", "/healthz")
    got = [r for r in call(base, "GET", "/__standin/requests").json["requests"] if name in r["path"]]
    assert got == [
        {"method": "PUT", "path": f"/collections/{name}/points", "wait": "true", "ordering": "strong",
         "status": 200, "shard_key": "eu"},
        {"method": "POST", "path": f"/collections/{name}/points/delete", "wait": "true", "ordering": None,
         "status": 200, "shard_key": 3},
        {"method": "POST", "path": f"/collections/{name}/points/payload", "wait": None, "ordering": "bogus",
         "status": 400},
        {"method": "POST", "path": f"/collections/{name}/points/scroll", "wait": None, "ordering": None,
         "status": 200},
    ]


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------

def test_restart_persistence(tmp_path):
    data = tmp_path / "data"
    auth = {"api-key": "k"}
    s = Standin(data, "--api-key", "k")
    try:
        assert call(s.url, "PUT", "/collections/keep", {"vectors": {"size": 2, "distance": "Euclid"}},
                    headers=auth).status == 200
        r = call(s.url, "PUT", "/collections/keep/points?wait=true",
                 {"points": [{"id": i, "vector": [i, i], "payload": {"i": i}} for i in range(50)]},
                 headers=auth)
        first_op = r.result["operation_id"]
        call(s.url, "POST", "/collections/keep/points/delete?wait=true", {"points": [0]}, headers=auth)
        call(s.url, "POST", "/collections/keep/points/payload?wait=true",
             {"payload": {"tag": "kept"}, "points": [7]}, headers=auth)
    finally:
        s.stop()

    s = Standin(data, "--api-key", "k")
    try:
        info = call(s.url, "GET", "/collections/keep", headers=auth).result
        assert info["points_count"] == 49
        assert info["config"]["params"]["vectors"] == {"size": 2, "distance": "Euclid"}
        rec = call(s.url, "GET", "/collections/keep/points/7", headers=auth).result
        assert rec["payload"] == {"i": 7, "tag": "kept"} and rec["vector"] == [7.0, 7.0]
        r = call(s.url, "PUT", "/collections/keep/points?wait=true",
                 {"points": [{"id": 100, "vector": [1, 1]}]}, headers=auth)
        assert r.result["operation_id"] > first_op + 2  # operation ids keep increasing
    finally:
        s.stop()


def test_creates_and_deletes_of_one_name_race_and_a_kill_keeps_what_was_answered(tmp_path):
    """Creates and deletes run outside the registry lock; racing ones of the same name still
    answer like Qdrant (one create wins, the rest 409; a delete is true once), and after
    `kill -9` the collections that exist are exactly those whose last answer said they do."""
    data = tmp_path / "data"
    auth = {"api-key": "k"}
    s = Standin(data, "--api-key", "k")
    names = [f"race{i}" for i in range(6)]
    answers = {n: [] for n in names}

    def worker(name):
        for _ in range(5):
            created = call(s.url, "PUT", f"/collections/{name}",
                           {"vectors": {"size": 2, "distance": "Dot"}}, headers=auth).status
            deleted = call(s.url, "DELETE", f"/collections/{name}", headers=auth).result
            answers[name].append((created, deleted))

    threads = [threading.Thread(target=worker, args=(n,)) for n in names for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for n in names:
            assert {c for c, _ in answers[n]} <= {200, 409}
            wins = sum(1 for c, _ in answers[n] if c == 200)
            assert wins == sum(1 for _, d in answers[n] if d is True) and wins >= 1
        keep = names[:3]
        for n in keep:
            assert call(s.url, "PUT", f"/collections/{n}", {"vectors": {"size": 2, "distance": "Dot"}},
                        headers=auth).status == 200
        listed = {c["name"] for c in call(s.url, "GET", "/collections", headers=auth).result["collections"]}
        assert listed == set(keep)
    finally:
        s.proc.kill()
        s.proc.wait()
        s.proc.stdout.close()

    s = Standin(data, "--api-key", "k")
    try:
        listed = {c["name"] for c in call(s.url, "GET", "/collections", headers=auth).result["collections"]}
        assert listed == set(keep)
        assert len(os.listdir(data / "collections")) == len(keep)  # the deleted ones' files are gone
    finally:
        s.stop()


# --------------------------------------------------------------------------------------------
# contract: every exchange validates against Qdrant's OpenAPI spec
# --------------------------------------------------------------------------------------------

def test_contract_proxy(proxy, base):
    px = proxy.url
    before = proxy.report()
    name = f"contract_{uuid.uuid4().hex[:8]}"
    named = f"contract_named_{uuid.uuid4().hex[:8]}"
    u = str(uuid.uuid4())
    exchanges = [
        ("GET", "/", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/livez", None, 200),
        ("GET", "/readyz", None, 200),
        ("PUT", f"/collections/{name}?timeout=10", {"vectors": {"size": 4, "distance": "Cosine"}}, 200),
        ("PUT", f"/collections/{name}", {"vectors": {"size": 4, "distance": "Cosine"}}, 409),
        ("PUT", f"/collections/{named}", {"vectors": {"a": {"size": 2, "distance": "Dot"}},
                                          "hnsw_config": {"m": 8}, "metadata": {"owner": "t"}}, 200),
        ("GET", f"/collections/{name}", None, 200),
        ("GET", f"/collections/{named}", None, 200),
        ("GET", "/collections/nope", None, 404),
        ("GET", f"/collections/{name}/exists", None, 200),
        ("GET", "/collections", None, 200),
        ("PUT", f"/collections/{name}/points?wait=true&ordering=medium",
         {"points": [{"id": 1, "vector": vec(1), "payload": {"k": "a", "n": 1}},
                     {"id": u, "vector": vec(2), "payload": {"k": "b", "n": 2}}]}, 200),
        ("PUT", f"/collections/{name}/points",
         {"batch": {"ids": [2, 3], "vectors": [vec(3), vec(4)], "payloads": [{"k": "c"}, None]}}, 200),
        ("PUT", f"/collections/{named}/points?wait=true",
         {"points": [{"id": 1, "vector": {"a": [1, 2]}}]}, 200),
        ("PUT", f"/collections/{name}/points?wait=true",
         {"points": [{"id": 9, "vector": [1, 2, 3]}]}, 400),
        ("PUT", "/collections/nope/points?wait=true", {"points": []}, 404),
        ("GET", f"/collections/{name}/points/1", None, 200),
        ("GET", f"/collections/{name}/points/{u}", None, 200),
        ("GET", f"/collections/{named}/points/1", None, 200),
        ("GET", f"/collections/{name}/points/77", None, 404),
        ("GET", f"/collections/{name}/points/xyz", None, 400),
        ("POST", f"/collections/{name}/points", {"ids": [1, u, 5], "with_payload": True,
                                                 "with_vector": True}, 200),
        ("POST", f"/collections/{name}/points", {"ids": [1], "with_payload": {"include": ["k"]}}, 200),
        ("POST", f"/collections/{name}/points/count", {"exact": True}, 200),
        ("POST", f"/collections/{name}/points/count",
         {"filter": {"must": [{"key": "k", "match": {"value": "a"}}]}}, 200),
        ("POST", f"/collections/{name}/points/scroll", {"limit": 2, "with_vector": True}, 200),
        ("POST", f"/collections/{name}/points/scroll", {"limit": 2, "offset": 3}, 200),
        ("POST", f"/collections/{name}/points/scroll",
         {"filter": {"should": [{"has_id": [1, 2]}], "must_not": [{"is_empty": {"key": "k"}}]}}, 200),
        ("POST", f"/collections/{name}/points/payload?wait=true", {"payload": {"x": 1}, "points": [1]}, 200),
        ("POST", f"/collections/{name}/points/payload?wait=true", {"payload": {"x": 1}, "points": [404]}, 404),
        ("POST", f"/collections/{name}/points/payload",
         {"payload": {"y": 2}, "filter": {"must": [{"key": "n", "range": {"gte": 1}}]}}, 200),
        ("PUT", f"/collections/{name}/points/payload?wait=true", {"payload": {"z": 3}, "points": [2]}, 200),
        ("POST", f"/collections/{name}/points/payload/delete?wait=true", {"keys": ["x"], "points": [1]}, 200),
        ("POST", f"/collections/{name}/points/payload/clear?wait=true", {"points": [3]}, 200),
        ("PUT", f"/collections/{name}/index?wait=true", {"field_name": "n", "field_schema": "integer"}, 200),
        ("GET", f"/collections/{name}", None, 200),
        ("DELETE", f"/collections/{name}/index/n?wait=true", None, 200),
        ("POST", f"/collections/{name}/points/delete?wait=true", {"points": [1, 12345]}, 200),
        ("POST", f"/collections/{name}/points/delete?wait=true",
         {"filter": {"must": [{"key": "k", "match": {"value": "c"}}]}}, 200),
        # cluster write semantics: ordering and shard_key (ShardKeySelector's three forms)
        ("PUT", f"/collections/{name}/points?wait=true&ordering=strong",
         {"points": [{"id": 20, "vector": vec(20)}], "shard_key": "eu"}, 200),
        ("PUT", f"/collections/{name}/points?wait=true&ordering=weak",
         {"batch": {"ids": [21], "vectors": [vec(21)]}, "shard_key": 7}, 200),
        ("POST", f"/collections/{name}/points/payload?wait=true&ordering=medium",
         {"payload": {"t": 1}, "points": [20], "shard_key": ["eu", 7]}, 200),
        ("PUT", f"/collections/{name}/points/payload?wait=true&ordering=strong",
         {"payload": {"t": 2}, "points": [20], "shard_key": {"target": "eu", "fallback": "us"}}, 200),
        ("POST", f"/collections/{name}/points/payload/delete?wait=true&ordering=strong",
         {"keys": ["t"], "points": [20], "shard_key": "eu"}, 200),
        ("POST", f"/collections/{name}/points", {"ids": [20], "shard_key": "eu"}, 200),
        ("POST", f"/collections/{name}/points/scroll", {"limit": 2, "shard_key": "eu"}, 200),
        ("POST", f"/collections/{name}/points/count", {"shard_key": ["eu"]}, 200),
        ("POST", f"/collections/{name}/points/query", {"query": vec(1), "shard_key": "eu"}, 200),
        ("POST", f"/collections/{name}/points/delete?wait=true&ordering=strong",
         {"points": [20, 21], "shard_key": "eu"}, 200),
        ("DELETE", f"/collections/{named}?timeout=5", None, 200),
        ("DELETE", f"/collections/{named}", None, 200),
    ]
    for method, path, body, status in exchanges:
        r = call(px, method, path, body)
        assert r.status == status, (method, path, r.raw)

    # injected faults are error envelopes too (503, 500, 429 with Retry-After, wait_timeout)
    for spec, status in (({"status": 503, "count": 1}, 503), ({"status": 500, "count": 1}, 500),
                         ({"status": 429, "retry_after": 1, "count": 1}, 429)):
        set_faults(base, spec)
        assert call(px, "POST", f"/collections/{name}/points/count", {}).status == status
    set_faults(base, {"wait_timeout": True, "count": 1})
    r = call(px, "PUT", f"/collections/{name}/points?wait=true", {"points": [{"id": 5, "vector": vec(5)}]})
    assert r.result["status"] == "wait_timeout"
    assert call(px, "DELETE", f"/collections/{name}", None).status == 200

    report = proxy.report()
    assert report["exchanges"] - before["exchanges"] >= len(exchanges)
    assert report["violations"][len(before["violations"]):] == []


# --------------------------------------------------------------------------------------------
# search and query: scores come from the engine; the tests check order, filters and replies
# --------------------------------------------------------------------------------------------

OPENAPI = os.path.join(os.path.dirname(CONTRACT_PROXY), "openapi.json")
_spec = {}


def spec_problems(schema, data):
    """What in `data` breaks components/schemas/<schema> of Qdrant's OpenAPI spec."""
    from openapi_schema_validator import OAS30Validator, oas30_format_checker

    if not _spec:
        with open(OPENAPI) as f:
            _spec.update(json.load(f))
    validator = OAS30Validator({"$ref": f"#/components/schemas/{schema}",
                                "components": _spec["components"]},
                               format_checker=oas30_format_checker)
    return [e.message for e in validator.iter_errors(data)]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


SEARCH_UUID = "6a4e4b8e-3f0c-4d52-9a43-2f1d2b8e0c11"
SEARCH_POINTS = [  # cosine to [1, 0, 0, 0]: 1 > 2 > 3 > 4 > SEARCH_UUID
    {"id": 1, "vector": [1, 0, 0, 0], "payload": {"city": "Berlin", "n": 1}},
    {"id": 2, "vector": [0.9, 0.1, 0, 0], "payload": {"city": "Oslo", "n": 2}},
    {"id": 3, "vector": [0.5, 0.5, 0, 0], "payload": {"city": "Berlin", "n": 3}},
    {"id": 4, "vector": [0.1, 1, 0, 0], "payload": {"city": "Oslo", "n": 4}},
    {"id": SEARCH_UUID, "vector": [-1, 0, 0.1, 0], "payload": {"city": "Rome", "n": 5}},
]
PAYLOADS = {p["id"]: p["payload"] for p in SEARCH_POINTS}
Q = [1, 0, 0, 0]


def search_collection(base, distance="Cosine"):
    name = new_collection(base, distance=distance)
    upsert(base, name, SEARCH_POINTS)
    return name


def test_search(base):
    name = search_collection(base)
    search = lambda body: call(base, "POST", f"/collections/{name}/points/search", body).result

    hits = search({"vector": Q, "limit": 5})
    assert [h["id"] for h in hits] == [1, 2, 3, 4, SEARCH_UUID]
    vectors = {p["id"]: p["vector"] for p in SEARCH_POINTS}
    for h in hits:
        assert h["score"] == pytest.approx(cosine(Q, vectors[h["id"]]), abs=1e-6)
        assert set(h) == {"id", "version", "score"}  # no payload, no vector unless asked
        assert spec_problems("ScoredPoint", h) == []

    assert [h["id"] for h in search({"vector": Q, "limit": 2})] == [1, 2]
    assert [h["id"] for h in search({"vector": Q, "top": 2})] == [1, 2]  # Qdrant's old name
    assert [h["id"] for h in search({"vector": Q, "limit": 2, "offset": 1})] == [2, 3]
    assert [h["id"] for h in search({"vector": Q, "limit": 5, "score_threshold": 0.5})] == [1, 2, 3]

    oslo = {"must": [{"key": "city", "match": {"value": "Oslo"}}]}
    hits = search({"vector": Q, "limit": 5, "filter": oslo, "with_payload": True})
    assert [(h["id"], h["payload"]) for h in hits] == [(2, PAYLOADS[2]), (4, PAYLOADS[4])]
    hits = search({"vector": Q, "limit": 1, "with_payload": ["n"], "with_vector": True})
    assert hits[0]["payload"] == {"n": 1} and hits[0]["vector"] == [1.0, 0.0, 0.0, 0.0]
    assert spec_problems("ScoredPoint", hits[0]) == []


def test_search_distances(base):
    # Euclid: the distance is the score, nearest (smallest) first; Dot: largest product first
    name = search_collection(base, "Euclid")
    hits = call(base, "POST", f"/collections/{name}/points/search", {"vector": [0.5, 0.5, 0, 0], "limit": 2}).result
    assert [h["id"] for h in hits] == [3, 2] and hits[0]["score"] == pytest.approx(0.0, abs=1e-6)
    assert hits[1]["score"] == pytest.approx(((0.4 ** 2) + (0.4 ** 2)) ** 0.5, abs=1e-6)
    name = search_collection(base, "Dot")
    hits = call(base, "POST", f"/collections/{name}/points/search", {"vector": [0, 2, 0, 0], "limit": 2}).result
    assert [(h["id"], h["score"]) for h in hits] == [(4, pytest.approx(2.0)), (3, pytest.approx(1.0))]


def test_search_errors(base):
    name = search_collection(base)
    path = f"/collections/{name}/points/search"
    r = call(base, "POST", path, {"vector": [1, 0, 0], "limit": 3})
    assert r.status == 400 and r.error == "Wrong input: Vector dimension error: expected dim: 4, got 3"
    assert spec_problems("ErrorResponse", r.json) == []
    r = call(base, "POST", "/collections/missing/points/search", {"vector": Q, "limit": 3})
    assert r.status == 404 and r.error == "Not found: Collection `missing` doesn't exist!"
    r = call(base, "POST", path, {"limit": 3})
    assert r.status == 400 and r.error == "Format error in JSON body: missing field `vector`"
    r = call(base, "POST", path, {"vector": Q})
    assert r.status == 400 and r.error == "Format error in JSON body: missing field `limit`"
    r = call(base, "POST", path, {"vector": Q, "limit": 0})
    assert r.status == 422 and r.error == "Validation error in JSON body: [limit: value 0 invalid, must be 1 or larger]"
    r = call(base, "POST", path, {"vector": [1, "a", 0, 0], "limit": 3})
    assert r.status == 400 and r.error.startswith("Format error in JSON body: vector[1]: invalid type")
    r = call(base, "POST", path, {"vector": {"name": "nope", "vector": Q}, "limit": 3})
    assert r.status == 400 and r.error == "Wrong input: Not existing vector name error: nope"


def test_query_through_contract_proxy(proxy, base):
    name = search_collection(base)
    before = len(proxy.violations())
    query = lambda body, c=name: call(proxy.url, "POST", f"/collections/{c}/points/query", body)
    ids = lambda r: [p["id"] for p in r.result["points"]]

    r = query({"query": Q, "limit": 5})
    assert ids(r) == [1, 2, 3, 4, SEARCH_UUID]
    scores = [p["score"] for p in r.result["points"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
    assert all(set(p) == {"id", "version", "score"} for p in r.result["points"])
    assert ids(query({"query": {"nearest": Q}})) == [1, 2, 3, 4, SEARCH_UUID]  # limit defaults to 10
    assert ids(query({"query": Q, "limit": 2, "offset": 1})) == [2, 3]
    assert ids(query({"query": Q, "score_threshold": 0.5})) == [1, 2, 3]
    assert ids(query({"query": Q, "limit": 2, "params": {"hnsw_ef": 32, "exact": True}})) == [1, 2]

    berlin = {"must": [{"key": "city", "match": {"value": "Berlin"}}]}
    r = query({"query": Q, "filter": berlin, "with_payload": True, "with_vector": True})
    assert [(p["id"], p["payload"]) for p in r.result["points"]] == [(1, PAYLOADS[1]), (3, PAYLOADS[3])]
    assert r.result["points"][0]["vector"] == [1.0, 0.0, 0.0, 0.0]
    r = query({"query": Q, "limit": 1, "with_payload": {"exclude": ["city"]}})
    assert r.result["points"][0]["payload"] == {"n": 1}

    # a point id: that point's vector, and the point itself is not among the results
    assert ids(query({"query": 2, "limit": 2})) == [1, 3]
    assert ids(query({"query": {"nearest": SEARCH_UUID}, "limit": 1, "filter": berlin})) == [3]
    # no query: points in id order
    assert sorted(map(str, ids(query({"limit": 10})))) == sorted(str(p["id"]) for p in SEARCH_POINTS)

    named = f"named_{uuid.uuid4().hex[:8]}"
    assert call(proxy.url, "PUT", f"/collections/{named}", {"vectors": {
        "text": {"size": 2, "distance": "Cosine"}, "image": {"size": 3, "distance": "Dot"}}}).status == 200
    upsert(proxy.url, named, [{"id": 1, "vector": {"text": [1, 0], "image": [1, 2, 3]}},
                              {"id": 2, "vector": {"text": [0, 1], "image": [3, 2, 1]}}])
    r = query({"query": [0, 0, 1], "using": "image", "with_vector": ["image"]}, named)
    assert [(p["id"], p["score"]) for p in r.result["points"]] == [(1, 3.0), (2, 1.0)]
    assert r.result["points"][0]["vector"] == {"image": [1.0, 2.0, 3.0]}
    assert ids(query({"query": 1, "using": "text"}, named)) == [2]

    r = query({"query": [1, 0, 0]})
    assert r.status == 400 and r.error == "Wrong input: Vector dimension error: expected dim: 4, got 3"
    r = query({"query": Q}, "missing")
    assert r.status == 404 and r.error == "Not found: Collection `missing` doesn't exist!"
    r = query({"query": 77})
    assert r.status == 404 and r.error == "Not found: No point with id 77 found"
    # (a request the spec itself forbids goes around the proxy, which would flag it)
    r = call(base, "POST", f"/collections/{name}/points/query", {"query": Q, "limit": 0})
    assert r.status == 422 and r.error == "Validation error in JSON body: [limit: value 0 invalid, must be 1 or larger]"
    r = query({"query": [0, 1], "using": "nope"}, named)
    assert r.status == 400 and r.error == "Wrong input: Not existing vector name error: nope"
    r = query({"query": [0, 1]}, named)  # the unnamed vector does not exist here
    assert r.status == 400 and r.error == "Wrong input: Not existing vector name error: "
    r = query({"query": {"fusion": "rrf"}})
    assert r.status == 400 and "not supported by qdrant-standin" in r.error

    assert proxy.violations()[before:] == []


def test_official_qdrant_client(proxy):
    """PyPI's qdrant-client, as a user would drive it, through the contract proxy."""
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import UnexpectedResponse

    before = len(proxy.violations())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = QdrantClient(url=proxy.url, timeout=10)  # checks the server's version (GET /)
        name = f"client_{uuid.uuid4().hex[:8]}"
        assert client.create_collection(name, vectors_config=models.VectorParams(
            size=4, distance=models.Distance.COSINE)) is True
    assert not [w for w in caught if "compatib" in str(w.message)], [str(w.message) for w in caught]
    assert client.collection_exists(name)

    result = client.upsert(name, points=[models.PointStruct(**p) for p in SEARCH_POINTS])
    assert result.status == models.UpdateStatus.COMPLETED
    assert client.get_collection(name).points_count == 5

    records = client.retrieve(name, ids=[1, SEARCH_UUID], with_payload=True)
    assert {r.id: r.payload for r in records} == {1: PAYLOADS[1], SEARCH_UUID: PAYLOADS[SEARCH_UUID]}
    assert all(r.vector is None for r in records)

    seen, offset = [], None
    while True:
        page, offset = client.scroll(name, limit=2, offset=offset, with_payload=True)
        seen += [(r.id, r.payload) for r in page]
        if offset is None:
            break
    assert sorted(seen, key=lambda t: str(t[0])) == sorted(PAYLOADS.items(), key=lambda t: str(t[0]))

    assert client.count(name, exact=True).count == 5
    oslo = models.Filter(must=[models.FieldCondition(key="city", match=models.MatchValue(value="Oslo"))])
    assert client.count(name, count_filter=oslo).count == 2

    hits = client.query_points(name, query=Q, limit=3, with_payload=True).points
    assert [(h.id, h.payload["city"]) for h in hits] == [(1, "Berlin"), (2, "Oslo"), (3, "Berlin")]
    assert hits[0].score == pytest.approx(1.0) and hits[0].score > hits[1].score > hits[2].score
    hits = client.query_points(name, query=Q, query_filter=oslo, with_vectors=True).points
    assert [h.id for h in hits] == [2, 4] and len(hits[0].vector) == 4
    hits = client.query_points(name, query=models.NearestQuery(nearest=2), limit=2).points
    assert [h.id for h in hits] == [1, 3]
    with pytest.raises(UnexpectedResponse) as wrong:
        client.query_points(name, query=[1, 0, 0])
    assert wrong.value.status_code == 400 and b"Vector dimension error: expected dim: 4, got 3" in wrong.value.content

    assert client.delete_collection(name) is True
    assert not client.collection_exists(name)
    client.close()
    assert proxy.violations()[before:] == []
