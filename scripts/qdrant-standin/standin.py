#!/usr/bin/env python3
"""qdrant-standin: a small Qdrant REST server over Qdrant's own embedded shard engine.

    python standin.py --host 127.0.0.1 --port 6333 --data DIR [--api-key KEY | --api-key-file PATH]

It speaks a subset of Qdrant's REST API (collections, points, payloads, count, scroll, payload
indexes) with the real server's envelopes, status codes and error texts, and stores every
collection as one `qdrant_edge.EdgeShard` (PyPI `qdrant-edge-py`) under DIR, so the point
semantics (id handling, payload merging, filters, scroll order) are Qdrant's own code.

On top of that it has test-only switches under /__standin/ to inject faults (503, 500, 429 with
Retry-After, delays, dropped connections, wait_timeout replies) and to read request counters.
See README.md beside this file.

Design notes:
  * stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive; every reply carries Content-Length.
  * one lock per collection serialises all engine calls on that collection; a registry lock
    guards create/delete/list.
  * on disk: DIR/collections/<slug>/{meta.json, shard/}. meta.json (written last on create)
    holds the collection's name and the config reported by GET /collections/{name}.
  * `wait=false` updates are applied synchronously too, but, like Qdrant, apply-time errors
    are then only logged (to stderr) and the reply is "acknowledged".
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import qdrant_edge as qe

QDRANT_VERSION = "1.19.0"
BODY_LIMIT = 32 * 1024 * 1024  # Qdrant's default service.max_request_size_mb
MAX_POINT_ID = 2**64 - 1
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
AUTH_WHITELIST = ("/",) + HEALTH_PATHS  # the same paths real Qdrant lets through without a key
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"

DISTANCES = {
    "Cosine": qe.Distance.Cosine,
    "Euclid": qe.Distance.Euclid,
    "Dot": qe.Distance.Dot,
    "Manhattan": qe.Distance.Manhattan,
}
PAYLOAD_SCHEMA_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "geo": qe.PayloadSchemaType.Geo,
    "text": qe.PayloadSchemaType.Text,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
    "uuid": qe.PayloadSchemaType.Uuid,
}
UPDATE_MODES = {
    "upsert": qe.UpdateMode.Upsert,
    "insert_only": qe.UpdateMode.InsertOnly,
    "update_only": qe.UpdateMode.UpdateOnly,
}

# What GET /collections/{name} reports for settings the engine does not expose: the defaults
# of Qdrant's config/config.yaml, merged with whatever the create request asked for.
DEFAULT_HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000,
                "max_indexing_threads": 0, "on_disk": False}
DEFAULT_OPTIMIZERS = {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                      "default_segment_number": 0, "max_segment_size": None,
                      "memmap_threshold": None, "indexing_threshold": 10000,
                      "flush_interval_sec": 5, "max_optimization_threads": None}
DEFAULT_WAL = {"wal_capacity_mb": 32, "wal_segments_ahead": 0, "wal_retain_closed": 1}


def log(msg: str) -> None:
    sys.stderr.write(f"qdrant-standin: {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Errors, in the shapes and words of Qdrant's StorageError / actix validation handlers
# --------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error reply: HTTP status plus the text that goes into {"status": {"error": ...}}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_input(desc: str) -> ApiError:
    return ApiError(400, f"Wrong input: {desc}")


def bad_request(desc: str) -> ApiError:
    return ApiError(400, f"Bad request: {desc}")


def not_found(desc: str) -> ApiError:
    return ApiError(404, f"Not found: {desc}")


def collection_not_found(name: str) -> ApiError:
    return not_found(f"Collection `{name}` doesn't exist!")


def format_error(desc: str) -> ApiError:
    """A body that is not JSON or does not deserialize into the request type: 400."""
    return ApiError(400, f"Format error in JSON body: {desc}")


def validation_error(field: str, desc: str, where: str = "JSON body") -> ApiError:
    """A body that deserializes but fails validation (e.g. limit 0): 422."""
    return ApiError(422, f"Validation error in {where}: [{field}: {desc}]")


def query_error(desc: str) -> ApiError:
    return ApiError(400, f"Deserialize error in query parameters: {desc}")


# Engine (OperationError) messages that Qdrant reports as 400 "Wrong input: ...".
_BAD_INPUT_PREFIXES = (
    "Vector dimension error", "Not existing vector name error", "Payload type does not match",
    "Unable to infer type", "Validation failed", "No range index", "No appropriate index",
    "Wrong usage of", "invalid JSON path",
)


def engine_error(exc: Exception) -> ApiError:
    """Map an exception raised by qdrant_edge to the reply the real server would give."""
    msg = str(exc)
    missing = re.fullmatch(r"No point with id (\S+)", msg)
    if missing:
        return not_found(f"No point with id {missing.group(1)} found")
    if msg.startswith("Wrong usage of multi vectors"):
        return bad_input("Conversion between multi and regular vectors failed")
    if msg.startswith(_BAD_INPUT_PREFIXES):
        return bad_input(msg)
    if isinstance(exc, (TypeError, ValueError, OverflowError)):
        return bad_request(msg)  # argument conversion in the bindings
    return ApiError(500, f"Service internal error: {msg}")


# --------------------------------------------------------------------------------------------
# JSON body decoding and checking
# --------------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def parse_json_body(body: bytes):
    """Decode a request body the way serde_json would: strict JSON, no NaN/Infinity."""
    if not body.strip():
        raise format_error("EOF while parsing a value at line 1 column 0")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except UnicodeDecodeError as e:
        raise format_error(f"invalid unicode in JSON body: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise format_error(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise format_error(str(e)) from None


def describe(value) -> str:
    """serde's way of naming the type of an unexpected value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def at(where: str) -> str:
    """Prefix for a message about the field at `where` ("" is the whole body)."""
    return f"{where}: " if where else ""


def type_error(where: str, value, expected: str) -> ApiError:
    return format_error(f"{at(where)}invalid type: {describe(value)}, expected {expected}")


def need_object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise type_error(where, value, "a map")
    return value


def need_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise type_error(where, value, "a sequence")
    return value


def need_bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise type_error(where, value, "a boolean")
    return value


def need_str(value, where: str) -> str:
    if not isinstance(value, str):
        raise type_error(where, value, "a string")
    return value


def need_uint(value, where: str, maximum: int = MAX_POINT_ID) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(where, value, "an unsigned integer")
    if value < 0 or value > maximum:
        raise format_error(f"{at(where)}invalid value: {describe(value)}, expected an unsigned integer")
    return value


def need_number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(where, value, "a number")
    return value


def field(obj: dict, key: str, where: str):
    """A required field."""
    if obj.get(key) is None:
        raise format_error(f"{at(where)}missing field `{key}`")
    return obj[key]


def sub(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


# --------------------------------------------------------------------------------------------
# Request objects -> qdrant_edge objects
# --------------------------------------------------------------------------------------------

def parse_point_id(value, where: str):
    """An ExtendedPointId: an unsigned 64-bit integer or a UUID string."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POINT_ID:
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise format_error(f"{where}: data did not match any variant of untagged enum "
                       f"ExtendedPointId: {describe(value)} is neither an unsigned 64-bit "
                       f"integer nor a UUID")


def parse_point_id_text(text: str):
    """A point id from a URL path (GET /collections/{name}/points/{id})."""
    if re.fullmatch(r"[0-9]+", text) and int(text) <= MAX_POINT_ID:
        return int(text)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise bad_input(f'Can not recognize "{text}" as point id') from None


def point_id_json(pid):
    return str(pid) if isinstance(pid, uuid.UUID) else pid


def parse_point_ids(value, where: str) -> list:
    return [parse_point_id(v, sub(where, i)) for i, v in enumerate(need_list(value, where))]


class _JsonBool:
    """A boolean the qdrant_edge bindings read as a boolean.

    qdrant_edge 0.9.0 converts a match value by trying str, then int, then bool; a Python bool
    is an int, so MatchValue(True) silently becomes MatchValue(1) and never matches `true`. The
    bindings (PyO3) accept numpy's bool type as a bool without it being an int, so this class
    poses as `numpy.bool_`: not a str, not an int, truthiness via __bool__.
    """
    __module__ = "numpy"
    __slots__ = ("value",)

    def __init__(self, value: bool):
        self.value = value

    def __bool__(self):
        return self.value


_JsonBool.__name__ = _JsonBool.__qualname__ = "bool_"


def parse_match(value, where: str):
    m = need_object(value, where)
    if "value" in m:
        v = m["value"]
        if isinstance(v, bool):
            return qe.MatchValue(_JsonBool(v))
        if isinstance(v, str) or (isinstance(v, int) and -2**63 <= v < 2**63):
            return qe.MatchValue(v)
        raise format_error(f"{sub(where, 'value')}: data did not match any variant of untagged "
                           f"enum ValueVariants: {describe(v)}")
    for key, cls in (("any", qe.MatchAny), ("except", qe.MatchExcept)):
        if key in m:
            items = need_list(m[key], sub(where, key))
            if not (all(isinstance(x, str) for x in items)
                    or all(isinstance(x, int) and not isinstance(x, bool) for x in items)):
                raise format_error(f"{sub(where, key)}: data did not match any variant of "
                                   f"untagged enum AnyVariants (strings or integers)")
            return cls(items)
    for key, cls in (("text", qe.MatchText), ("text_any", qe.MatchTextAny),
                     ("phrase", qe.MatchPhrase), ("prefix", qe.MatchPrefix)):
        if key in m:
            return cls(need_str(m[key], sub(where, key)))
    raise format_error(f"{where}: data did not match any variant of untagged enum Match")


def parse_range(value, where: str):
    r = need_object(value, where)
    bounds = {k: r[k] for k in ("gt", "gte", "lt", "lte") if r.get(k) is not None}
    if any(isinstance(v, str) for v in bounds.values()):  # DatetimeRange
        return qe.RangeDateTime(**{k: need_str(v, sub(where, k)) for k, v in bounds.items()})
    return qe.RangeFloat(**{k: need_number(v, sub(where, k)) for k, v in bounds.items()})


def parse_field_condition(c: dict, where: str):
    key = need_str(c["key"], sub(where, "key"))
    kwargs = {}
    if c.get("match") is not None:
        kwargs["match"] = parse_match(c["match"], sub(where, "match"))
    if c.get("range") is not None:
        kwargs["range"] = parse_range(c["range"], sub(where, "range"))
    if c.get("values_count") is not None:
        vc = need_object(c["values_count"], sub(where, "values_count"))
        kwargs["values_count"] = qe.ValuesCount(**{
            k: need_uint(vc[k], sub(sub(where, "values_count"), k))
            for k in ("lt", "gt", "lte", "gte") if vc.get(k) is not None})
    for flag in ("is_empty", "is_null"):
        if c.get(flag) is not None:
            kwargs[flag] = need_bool(c[flag], sub(where, flag))
    for geo in ("geo_bounding_box", "geo_radius", "geo_polygon"):
        if c.get(geo) is not None:
            raise bad_request(f"{sub(where, geo)}: geo conditions are not supported by qdrant-standin")
    if not kwargs:
        raise validation_error(where, "At least one field condition must be specified")
    return qe.FieldCondition(key, **kwargs)


_FILTER_KEYS = {"must", "should", "must_not", "min_should"}


def parse_condition(value, where: str):
    c = need_object(value, where)
    if "key" in c:
        return parse_field_condition(c, where)
    if "has_id" in c:
        return qe.HasIdCondition(set(parse_point_ids(c["has_id"], sub(where, "has_id"))))
    if "is_empty" in c:
        k = need_object(c["is_empty"], sub(where, "is_empty"))
        return qe.IsEmptyCondition(need_str(field(k, "key", sub(where, "is_empty")), where))
    if "is_null" in c:
        k = need_object(c["is_null"], sub(where, "is_null"))
        return qe.IsNullCondition(need_str(field(k, "key", sub(where, "is_null")), where))
    if "has_vector" in c:
        return qe.HasVectorCondition(need_str(c["has_vector"], sub(where, "has_vector")))
    if "nested" in c:
        n = need_object(c["nested"], sub(where, "nested"))
        return qe.NestedCondition(need_str(field(n, "key", sub(where, "nested")), where),
                                  parse_filter(field(n, "filter", sub(where, "nested")),
                                               sub(sub(where, "nested"), "filter")))
    if set(c) <= _FILTER_KEYS:
        return parse_filter(c, where)
    raise format_error(f"{where}: data did not match any variant of untagged enum Condition")


def parse_filter(value, where: str = "filter"):
    """A Qdrant Filter (must / should / must_not / min_should) -> qdrant_edge.Filter."""
    if value is None:
        return None
    f = need_object(value, where)
    unknown = sorted(set(f) - _FILTER_KEYS)
    if unknown:
        raise format_error(f"{where}: unknown field `{unknown[0]}`, expected one of "
                           f"`should`, `min_should`, `must`, `must_not`")

    def conditions(key):
        v = f.get(key)
        if v is None:
            return None
        if isinstance(v, dict):  # a single condition is allowed in place of a list
            return [parse_condition(v, sub(where, key))]
        return [parse_condition(x, sub(sub(where, key), i))
                for i, x in enumerate(need_list(v, sub(where, key)))]

    min_should = None
    if f.get("min_should") is not None:
        w = sub(where, "min_should")
        ms = need_object(f["min_should"], w)
        count = need_uint(field(ms, "min_count", w), sub(w, "min_count"))
        if count < 1:
            raise validation_error(sub(w, "min_count"), f"value {count} invalid, must be 1 or larger")
        conds = [parse_condition(x, sub(sub(w, "conditions"), i))
                 for i, x in enumerate(need_list(field(ms, "conditions", w), sub(w, "conditions")))]
        min_should = qe.MinShould(conds, count)
    return qe.Filter(must=conditions("must"), should=conditions("should"),
                     must_not=conditions("must_not"), min_should=min_should)


def parse_with_payload(value, where: str, default: bool):
    """WithPayloadInterface: bool | [keys] | {"include": ...} | {"exclude": ...}."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return [need_str(k, sub(where, i)) for i, k in enumerate(value)]
    if isinstance(value, dict):
        for key, cls in (("include", qe.PayloadSelector.Include),
                         ("exclude", qe.PayloadSelector.Exclude)):
            if key in value:
                keys = value[key]
                keys = [keys] if isinstance(keys, str) else keys
                return cls([need_str(k, sub(sub(where, key), i))
                            for i, k in enumerate(need_list(keys, sub(where, key)))])
    raise format_error(f"{where}: data did not match any variant of untagged enum WithPayloadInterface")


def parse_with_vector(value, where: str, default: bool):
    """WithVector: bool | [vector names]."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return [need_str(k, sub(where, i)) for i, k in enumerate(value)]
    raise format_error(f"{where}: data did not match any variant of untagged enum WithVector")


F32_MAX = 3.4028234663852886e38


def _check_numbers(values: list, where: str) -> None:
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise type_error(sub(where, i), x, "f32")
        if not -F32_MAX <= x <= F32_MAX:  # would be stored as infinity
            raise format_error(f"{sub(where, i)}: number out of range for f32")


def parse_vector(value, where: str):
    """VectorStruct: dense [f32], multi-dense [[f32]], or {name: vector}. The engine checks
    dimensions and names (and reports them with Qdrant's texts); this checks JSON types."""
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            for i, row in enumerate(value):
                _check_numbers(need_list(row, sub(where, i)), sub(where, i))
        else:
            _check_numbers(value, where)
        return value
    if isinstance(value, dict):
        if any(k in value for k in ("text", "image", "object")) and "model" in value:
            raise bad_request(f"{where}: inference objects (Document/Image/InferenceObject) "
                              "are not supported by qdrant-standin")
        for name, v in value.items():
            if isinstance(v, dict):
                raise bad_request(f"{sub(where, name)}: sparse vectors are not supported by "
                                  "qdrant-standin")
            parse_vector(need_list(v, sub(where, name)), sub(where, name))
        return value
    raise format_error(f"{where}: data did not match any variant of untagged enum VectorStruct")


@contextlib.contextmanager
def converting():
    """A value the qdrant_edge bindings cannot convert (an integer beyond 64 bits, say) is a
    problem with the request: report it as a format error rather than a 500."""
    try:
        yield
    except (TypeError, ValueError, OverflowError) as e:
        raise format_error(str(e).splitlines()[0]) from None


def parse_payload(value, where: str):
    if value is None:
        return None
    return need_object(value, where)


def parse_points_selector(body, where_ops: str, req=None):
    """PointsSelector: {"points": [ids]} or {"filter": {...}} -> ("ids", list) | ("filter", f)."""
    b = need_object(body, "")
    parse_shard_key_selector(b, req)
    if b.get("points") is not None:
        return "ids", parse_point_ids(b["points"], "points")
    if b.get("filter") is not None:
        return "filter", parse_filter(b["filter"])
    raise format_error(f"data did not match any variant of untagged enum {where_ops}")


def parse_shard_key(value, where: str):
    """A ShardKey: a string or an unsigned 64-bit integer."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POINT_ID:
        return value
    raise format_error(f"{where}: data did not match any variant of untagged enum ShardKey: "
                       f"{describe(value)} is neither a string nor an unsigned 64-bit integer")


def parse_shard_key_selector(body: dict, req=None):
    """The optional `shard_key` of a points request (ShardKeySelector): a ShardKey, a list of them,
    or {"target": ShardKey, "fallback": ShardKey}. The stand-in is one shard: the selector is
    checked and recorded on `req` (GET /__standin/requests), not used to route."""
    value = body.get("shard_key")
    if value is not None:
        if isinstance(value, list):
            for i, key in enumerate(value):
                parse_shard_key(key, f"shard_key[{i}]")
        elif isinstance(value, dict):
            for name in ("target", "fallback"):
                parse_shard_key(field(value, name, "shard_key"), f"shard_key.{name}")
            extra = sorted(set(value) - {"target", "fallback"})
            if extra:
                raise format_error(f"shard_key: unknown field `{extra[0]}`, expected `target` or `fallback`")
        else:
            parse_shard_key(value, "shard_key")
    if req is not None and "shard_key" in body:
        req.shard_key = value
    return value


def parse_ids_or_filter(b: dict):
    """SetPayload / DeletePayload selection: points win over filter, one of them is required."""
    if b.get("points") is not None:
        return "ids", parse_point_ids(b["points"], "points")
    if b.get("filter") is not None:
        return "filter", parse_filter(b["filter"])
    raise format_error("Either list of point ids or filter must be provided")


def parse_limit(value, where: str, default: int | None) -> int:
    """A `limit`: an unsigned integer, at least 1; `default` when absent (None: required)."""
    if value is None:
        if default is None:
            raise format_error(f"missing field `{where}`")
        return default
    limit = need_uint(value, where)
    if limit < 1:
        raise validation_error(where, f"value {limit} invalid, must be 1 or larger")
    return limit


def parse_search_params(value, where: str = "params"):
    """SearchParams: hnsw_ef, exact, indexed_only, quantization, acorn."""
    if value is None:
        return None
    p = need_object(value, where)
    kwargs = {}
    if p.get("hnsw_ef") is not None:
        kwargs["hnsw_ef"] = need_uint(p["hnsw_ef"], sub(where, "hnsw_ef"))
    for flag in ("exact", "indexed_only"):
        if p.get(flag) is not None:
            kwargs[flag] = need_bool(p[flag], sub(where, flag))
    if p.get("quantization") is not None:
        w = sub(where, "quantization")
        q = need_object(p["quantization"], w)
        kwargs["quantization"] = qe.QuantizationSearchParams(
            ignore=need_bool(q.get("ignore", False), sub(w, "ignore")),
            rescore=None if q.get("rescore") is None else need_bool(q["rescore"], sub(w, "rescore")),
            oversampling=None if q.get("oversampling") is None
            else need_number(q["oversampling"], sub(w, "oversampling")))
    if p.get("acorn") is not None:
        w = sub(where, "acorn")
        a = need_object(p["acorn"], w)
        kwargs["acorn"] = qe.AcornSearchParams(
            enable=need_bool(a.get("enable", False), sub(w, "enable")),
            max_selectivity=None if a.get("max_selectivity") is None
            else need_number(a["max_selectivity"], sub(w, "max_selectivity")))
    return qe.SearchParams(**kwargs)


def parse_dense_query(value, where: str) -> list:
    """A query vector: a plain list of numbers (the engine checks its dimension)."""
    if value and isinstance(value[0], list):
        raise bad_request(f"{where}: multivectors are not supported by qdrant-standin")
    _check_numbers(value, where)
    return value


def parse_named_vector(value, where: str = "vector"):
    """NamedVectorStruct of a search: [f32] or {"name", "vector": [f32]} -> (vector, name | None)."""
    if isinstance(value, list):
        return parse_dense_query(value, where), None
    if isinstance(value, dict) and "name" in value and "vector" in value:
        name = need_str(value["name"], sub(where, "name"))
        vector = value["vector"]
        if isinstance(vector, dict):
            raise bad_request(f"{sub(where, 'vector')}: sparse vectors are not supported by qdrant-standin")
        return parse_dense_query(need_list(vector, sub(where, "vector")), sub(where, "vector")), name
    raise format_error(f"{where}: data did not match any variant of untagged enum NamedVectorStruct")


_UNSUPPORTED_QUERIES = ("recommend", "discover", "context", "order_by", "fusion", "rrf", "formula",
                        "sample", "relevance_feedback")


def parse_query_input(value, where: str = "query"):
    """QueryInterface of a query -> ("vector", [f32]) | ("id", point id) | None (no query).

    Supported: a vector, a point id (that point's vector) and {"nearest": either}."""
    if value is None:
        return None
    if isinstance(value, dict) and "nearest" in value:
        if value.get("mmr") is not None:
            raise bad_request(f"{sub(where, 'mmr')}: MMR is not supported by qdrant-standin")
        return parse_query_input(value["nearest"], sub(where, "nearest"))
    if isinstance(value, list):
        return "vector", parse_dense_query(value, where)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return "id", parse_point_id(value, where)
        except ApiError:
            pass
    if isinstance(value, dict):
        if "indices" in value and "values" in value:
            raise bad_request(f"{where}: sparse vectors are not supported by qdrant-standin")
        if "model" in value:
            raise bad_request(f"{where}: inference objects (Document/Image/InferenceObject) "
                              "are not supported by qdrant-standin")
        for key in _UNSUPPORTED_QUERIES:
            if key in value:
                raise bad_request(f"{sub(where, key)}: {key} queries are not supported by "
                                  "qdrant-standin (only nearest)")
    raise format_error(f"{where}: data did not match any variant of untagged enum QueryInterface")


# --------------------------------------------------------------------------------------------
# Collections on disk
# --------------------------------------------------------------------------------------------

_INVALID_NAME_CHARS = '<>:"/\\|?*\0\x1f'


def check_collection_name(name: str, strict: bool) -> None:
    """Qdrant's path validation: 1..255 characters; `/` and NUL never, and for a new
    collection none of the filesystem-unsafe characters either."""
    if not 1 <= len(name) <= 255:
        raise validation_error("collection_name", f"value {json.dumps(name)} invalid, must be "
                               "from 1 to 255 characters", "path parameters")
    for c in (_INVALID_NAME_CHARS if strict else "/\0"):
        if c in name:
            raise validation_error("collection_name",
                                   f'collection name cannot contain "{c}" char', "path parameters")


def collection_slug(name: str) -> str:
    """A directory name for a collection: readable prefix + hash (names may be any Unicode)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:48].lstrip(".")
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


class Collection:
    """One collection: its EdgeShard, its meta data and the lock that serialises its use."""

    def __init__(self, name: str, path: str, meta: dict, shard):
        self.name = name
        self.path = path
        self.meta = meta
        self.shard = shard
        self.lock = threading.Lock()
        self.closed = False
        self.last_op_id = int(meta.get("last_operation_id", 0))

    def use(self):
        """Take the collection lock, failing like Qdrant if it was deleted meanwhile."""
        return _CollectionGuard(self)

    def next_op_id(self) -> int:
        self.last_op_id += 1
        return self.last_op_id

    def write_meta(self) -> None:
        self.meta["last_operation_id"] = self.last_op_id
        tmp = os.path.join(self.path, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "meta.json"))

    def close(self) -> None:
        """Flush and close the shard (caller holds self.lock)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.shard.flush()
        finally:
            self.shard.close()


class _CollectionGuard:
    def __init__(self, col: Collection):
        self.col = col

    def __enter__(self) -> Collection:
        self.col.lock.acquire()
        if self.col.closed:
            self.col.lock.release()
            raise collection_not_found(self.col.name)
        return self.col

    def __exit__(self, *exc):
        self.col.lock.release()


def edge_config(meta: dict):
    """EdgeConfig for a collection's vectors. One search thread: the collection lock serialises
    engine calls anyway, and the default (one per CPU) multiplies with many collections."""
    vectors = meta["config"]["params"]["vectors"]

    def params(v):
        return qe.EdgeVectorParams(size=v["size"], distance=DISTANCES[v["distance"]])

    if "size" in vectors and not isinstance(vectors["size"], dict):
        edge_vectors = params(vectors)
    else:
        edge_vectors = {name: params(v) for name, v in vectors.items()}
    return qe.EdgeConfig(vectors=edge_vectors, max_search_threads=1)


class Store:
    """All collections under DATA/collections."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "collections")
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._creating: set[str] = set()
        self._load_all()

    def _load_all(self) -> None:
        for entry in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, entry)
            if entry.startswith(".trash-"):  # an interrupted delete of an earlier stand-in version
                shutil.rmtree(path, ignore_errors=True)
                continue
            meta_path = os.path.join(path, "meta.json")
            if not os.path.isfile(meta_path):  # a create that was interrupted
                log(f"removing incomplete collection directory {path}")
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
                shard = qe.EdgeShard.load(os.path.join(path, "shard"), edge_config(meta))
            except Exception as e:  # keep serving the other collections
                log(f"cannot load collection in {path}: {e}")
                continue
            self._collections[meta["name"]] = Collection(meta["name"], path, meta, shard)

    def get(self, name: str) -> Collection:
        with self._lock:
            col = self._collections.get(name)
        if col is None:
            raise collection_not_found(name)
        return col

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self._collections

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    # The registry lock is only held for dictionary and single-file operations: opening,
    # flushing and closing shards (which fsync, and under a loaded disk take seconds) happen
    # outside it, so that listing collections and reaching other collections never waits for
    # another collection's create or delete.

    def create(self, name: str, meta: dict) -> None:
        with self._lock:
            if name in self._collections or name in self._creating:
                raise ApiError(409, f"Wrong input: Collection `{name}` already exists!")
            self._creating.add(name)
        # A directory of its own per created collection: a create never meets the files of a
        # deleted collection of the same name that is still closing.
        path = os.path.join(self.root, f"{collection_slug(name)}-{uuid.uuid4().hex[:8]}")
        try:
            try:
                shard = qe.EdgeShard.create(os.path.join(path, "shard"), edge_config(meta))
            except Exception as e:
                raise engine_error(e) from None
            col = Collection(name, path, meta, shard)
            col.write_meta()  # written last: its presence marks a complete collection
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            with self._lock:
                self._creating.discard(name)
            raise
        with self._lock:
            self._creating.discard(name)
            self._collections[name] = col

    def delete(self, name: str) -> bool:
        with self._lock:
            col = self._collections.pop(name, None)
            if col is None:
                return False
            # Without meta.json the directory is an incomplete collection, removed at the next
            # start: a crash from here on never brings the deleted collection back.
            os.unlink(os.path.join(col.path, "meta.json"))
        with col.lock:  # waits for in-flight requests on this collection
            try:
                col.close()
            except Exception as e:
                log(f"closing collection {name!r}: {e}")
        shutil.rmtree(col.path, ignore_errors=True)
        return True

    def close_all(self) -> None:
        with self._lock:
            cols = list(self._collections.values())
            self._collections.clear()
        for col in cols:
            with col.lock:
                try:
                    col.close()
                    col.write_meta()
                except Exception as e:
                    log(f"closing collection {col.name!r}: {e}")


# --------------------------------------------------------------------------------------------
# Fault injection and request statistics (test-only, under /__standin/)
# --------------------------------------------------------------------------------------------

FAULT_STATUSES = {
    503: "Service Unavailable: injected fault (qdrant-standin)",
    500: "Service internal error: injected fault (qdrant-standin)",
    429: "Rate limiting exceeded: injected fault (qdrant-standin)",
}
FAULT_FIELDS = {"status", "retry_after", "delay_ms", "drop", "wait_timeout", "duration_s",
                "count", "paths"}
FAULT_EFFECTS = {"status", "delay_ms", "drop", "wait_timeout"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_faults(spec) -> dict:
    """Check a POST /__standin/faults body; raises ApiError(400) describing the problem."""
    if not isinstance(spec, dict):
        raise bad_request("fault spec must be a JSON object")
    unknown = sorted(set(spec) - FAULT_FIELDS)
    if unknown:
        raise bad_request(f"unknown fault field(s) {unknown}; known: {sorted(FAULT_FIELDS)}")
    spec = {k: v for k, v in spec.items() if v is not None}
    if not set(spec) & FAULT_EFFECTS:
        raise bad_request(f"a fault needs at least one of {sorted(FAULT_EFFECTS)}")
    if "status" in spec and spec["status"] not in FAULT_STATUSES:
        raise bad_request(f"status must be one of {sorted(FAULT_STATUSES)}")
    if "retry_after" in spec and (spec.get("status") != 429 or not _number(spec["retry_after"])
                                  or spec["retry_after"] < 0):
        raise bad_request("retry_after (seconds, >= 0) goes with status 429")
    if "delay_ms" in spec and (not _number(spec["delay_ms"]) or spec["delay_ms"] < 0):
        raise bad_request("delay_ms must be a number >= 0")
    for flag in ("drop", "wait_timeout"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise bad_request(f"{flag} must be a boolean")
    if "duration_s" in spec and (not _number(spec["duration_s"]) or spec["duration_s"] <= 0):
        raise bad_request("duration_s must be a number > 0")
    if "count" in spec and (not isinstance(spec["count"], int) or isinstance(spec["count"], bool)
                            or spec["count"] < 1):
        raise bad_request("count must be an integer >= 1")
    if "paths" in spec:
        try:
            re.compile(need_str(spec["paths"], "paths"))
        except re.error as e:
            raise bad_request(f"paths is not a valid regular expression: {e}") from None
    return spec


class Faults:
    """The current fault state; one fault spec at a time, replaced by each POST."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spec: dict | None = None
        self._paths = None
        self._remaining: int | None = None
        self._expires: float | None = None

    def set(self, spec: dict) -> None:
        with self._lock:
            self._spec = spec
            self._paths = re.compile(spec["paths"]) if "paths" in spec else None
            self._remaining = spec.get("count")
            self._expires = time.monotonic() + spec["duration_s"] if "duration_s" in spec else None

    def clear(self) -> None:
        with self._lock:
            self._spec = None

    def _expire(self) -> None:
        if self._spec is not None and self._expires is not None and time.monotonic() >= self._expires:
            self._spec = None

    def snapshot(self) -> dict:
        with self._lock:
            self._expire()
            if self._spec is None:
                return {"faults": None, "remaining": None, "expires_in_s": None}
            expires = None if self._expires is None else round(max(0.0, self._expires - time.monotonic()), 3)
            return {"faults": dict(self._spec), "remaining": self._remaining, "expires_in_s": expires}

    def take(self, path: str, wait_mutation: bool) -> dict | None:
        """The fault to apply to this request, if any (consumes one use of `count`).

        A spec whose only effect is wait_timeout is only used by update requests with wait=true,
        so that reads in between do not use up its count."""
        with self._lock:
            self._expire()
            spec = self._spec
            if spec is None or (self._paths is not None and not self._paths.search(path)):
                return None
            if not wait_mutation and not set(spec) & (FAULT_EFFECTS - {"wait_timeout"}):
                return None
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._spec = None
            return spec


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.requests: dict[str, int] = {}
        self.responses: dict[str, int] = {}
        self.faults_injected = 0

    def record(self, key: str, outcome: str, faulted: bool) -> None:
        with self._lock:
            self.total += 1
            self.requests[key] = self.requests.get(key, 0) + 1
            self.responses[outcome] = self.responses.get(outcome, 0) + 1
            self.faults_injected += faulted

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": self.total, "requests": dict(sorted(self.requests.items())),
                    "responses": dict(sorted(self.responses.items())),
                    "faults_injected": self.faults_injected}


class Requests:
    """The last requests to Qdrant's API, for tests to see what a client sent: method, path,
    `wait` and `ordering` as given in the query, the body's `shard_key` (only when the body had
    one), and the reply's status."""

    LIMIT = 5000

    def __init__(self):
        self._lock = threading.Lock()
        self._items: collections.deque = collections.deque(maxlen=self.LIMIT)

    def record(self, item: dict) -> None:
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": list(self._items), "limit": self.LIMIT}


# --------------------------------------------------------------------------------------------
# The REST API
# --------------------------------------------------------------------------------------------

class Raw:
    """A reply that is not wrapped in the {"result", "status", "time"} envelope."""

    def __init__(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}


ABSENT = object()


class Request:
    def __init__(self, method: str, path: str, params: dict, query: dict, body: bytes):
        self.method, self.path, self.params, self.query, self.body = method, path, params, query, body
        self.wait_timeout = False  # set by the wait_timeout fault
        self.shard_key = ABSENT  # the body's shard_key as checked (parse_shard_key_selector)

    def json(self):
        return parse_json_body(self.body)

    def q(self, name: str):
        values = self.query.get(name)
        return values[-1] if values else None

    def wait(self) -> bool:
        return self.q_bool("wait", False)

    def q_bool(self, name: str, default: bool) -> bool:
        v = self.q(name)
        if v is None:
            return default
        if v not in ("true", "false"):
            raise query_error(f"{name}: provided string was not `true` or `false`")
        return v == "true"

    def check_query(self, update: bool = False) -> None:
        """Validate the query parameters Qdrant declares (wait, ordering, timeout, consistency)."""
        if update:
            self.wait()
            ordering = self.q("ordering")
            if ordering is not None and ordering not in ("weak", "medium", "strong"):
                raise query_error(f"ordering: unknown variant `{ordering}`, expected one of "
                                  "`weak`, `medium`, `strong`")
        timeout = self.q("timeout")
        if timeout is not None and not re.fullmatch(r"[0-9]+", timeout):
            raise query_error(f"timeout: invalid digit found in string {timeout!r}")
        consistency = self.q("consistency")
        if consistency is not None and not (re.fullmatch(r"[0-9]+", consistency)
                                            or consistency in ("majority", "quorum", "all")):
            raise query_error(f"consistency: data did not match any variant of untagged enum "
                              f"ReadConsistency: {consistency!r}")


class Api:
    def __init__(self, store: Store, faults: Faults, stats: Stats):
        self.store, self.faults, self.stats = store, faults, stats
        self.requests = Requests()

    # -- service ------------------------------------------------------------------------------

    def root(self, req):
        body = json.dumps({"title": "qdrant - vector search engine", "version": QDRANT_VERSION},
                          separators=(",", ":"))
        return Raw(200, body.encode(), JSON_TYPE)

    def healthz(self, req):
        return Raw(200, b"healthz check passed", TEXT_TYPE)

    def readyz(self, req):
        return Raw(200, b"all shards are ready", TEXT_TYPE)

    # -- collections ----------------------------------------------------------------------------

    def collection(self, req, strict_name: bool = False) -> str:
        name = req.params["collection_name"]
        check_collection_name(name, strict_name)
        return name

    def list_collections(self, req):
        return {"collections": [{"name": n} for n in self.store.names()]}

    def collection_exists(self, req):
        return {"exists": self.store.exists(self.collection(req))}

    def get_collection(self, req):
        req.check_query()
        with self.store.get(self.collection(req)).use() as col:
            info = col.shard.info()
            schema = {key: {"data_type": str(p.data_type).rsplit(".", 1)[-1].lower(),
                            "points": p.points}
                      for key, p in info.payload_schema.items()}
            return {
                "status": "green",
                "optimizer_status": "ok",
                "indexed_vectors_count": info.indexed_vectors_count,
                "points_count": info.points_count,
                "segments_count": info.segments_count,
                "config": col.meta["config"],
                "payload_schema": schema,
                "update_queue": {"length": 0},
            }

    def delete_collection(self, req):
        req.check_query()
        return self.store.delete(self.collection(req))

    def create_collection(self, req):
        req.check_query()
        name = self.collection(req, strict_name=True)
        body = need_object(req.json(), "")
        self.store.create(name, {"name": name, "config": self.collection_config(body)})
        return True

    @staticmethod
    def vector_params(v, where: str) -> dict:
        v = need_object(v, where)
        size = field(v, "size", where)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise format_error(f"{sub(where, 'size')}: invalid value: {describe(size)}, "
                               "expected a nonzero u64")
        if size > 65536:
            raise validation_error(sub(where, "size"), f"value {size} invalid, must be from 1 to 65536")
        distance = field(v, "distance", where)
        if distance not in DISTANCES:
            raise format_error(f"{sub(where, 'distance')}: unknown variant {describe(distance)}, "
                               "expected one of `Cosine`, `Euclid`, `Dot`, `Manhattan`")
        for unsupported in ("multivector_config", "datatype"):
            if v.get(unsupported) is not None:
                raise bad_request(f"{sub(where, unsupported)} is not supported by qdrant-standin")
        out = {"size": size, "distance": distance}
        # Storage/index hints: accepted and reported back, not applied by the stand-in.
        for hint in ("hnsw_config", "quantization_config", "on_disk", "memory"):
            if v.get(hint) is not None:
                out[hint] = v[hint]
        return out

    def collection_config(self, body: dict) -> dict:
        """The CollectionConfig that GET /collections/{name} will report."""
        vectors = body.get("vectors")
        if vectors is None:
            raise bad_request("qdrant-standin needs `vectors` (at least one dense vector)")
        need_object(vectors, "vectors")
        if "size" in vectors and not isinstance(vectors["size"], dict):
            vectors_out = self.vector_params(vectors, "vectors")
        elif vectors:
            vectors_out = {need_str(k, "vectors"): self.vector_params(v, sub("vectors", k))
                           for k, v in vectors.items()}
        else:
            raise bad_request("qdrant-standin needs `vectors` (at least one dense vector)")
        if body.get("sparse_vectors"):
            raise bad_request("sparse_vectors are not supported by qdrant-standin")
        if body.get("sharding_method") not in (None, "auto"):
            raise bad_request("custom sharding is not supported by qdrant-standin")

        def merged(defaults: dict, key: str) -> dict:
            diff = need_object(body.get(key) or {}, key)
            return {**defaults, **{k: v for k, v in diff.items() if v is not None}}

        params = {"vectors": vectors_out, "shard_number": 1, "replication_factor": 1,
                  "write_consistency_factor": 1, "on_disk_payload": True}
        for key in ("shard_number", "replication_factor", "write_consistency_factor"):
            if body.get(key) is not None:
                params[key] = need_uint(body[key], key, 2**32 - 1)
                if params[key] == 0:
                    raise format_error(f"{key}: invalid value: integer `0`, expected a nonzero u32")
        if body.get("on_disk_payload") is not None:
            params["on_disk_payload"] = need_bool(body["on_disk_payload"], "on_disk_payload")
        config = {
            "params": params,
            "hnsw_config": merged(DEFAULT_HNSW, "hnsw_config"),
            "optimizer_config": merged(DEFAULT_OPTIMIZERS, "optimizers_config"),
            "wal_config": merged(DEFAULT_WAL, "wal_config"),
            "quantization_config": body.get("quantization_config"),
            "strict_mode_config": body.get("strict_mode_config") or {"enabled": False},
        }
        if body.get("metadata") is not None:
            config["metadata"] = need_object(body["metadata"], "metadata")
        return config

    # -- updates --------------------------------------------------------------------------------

    def apply_update(self, req, name: str, build_ops):
        """Run an update like Qdrant's update API.

        build_ops() parses the body into engine operations (parse errors are always reported).
        With wait=true, engine errors are the reply; with wait=false (the default) the reply is
        "acknowledged" and engine errors are only logged, as the real server only logs them.
        Checks run in the real server's order: path, body, query, then the collection."""
        with converting():
            ops = build_ops()
        req.check_query(update=True)
        wait = req.wait()
        col = self.store.get(name)
        with col.use():
            op_id = col.next_op_id()
            try:
                for op in ops:
                    col.shard.update(op)
            except Exception as e:
                err = engine_error(e)
                if wait and not req.wait_timeout:
                    raise err from None
                log(f"update {op_id} on collection {name!r} failed: {err.message}")
        if req.wait_timeout and wait:
            status = "wait_timeout"
        else:
            status = "completed" if wait else "acknowledged"
        return {"operation_id": op_id, "status": status}

    def upsert_points(self, req):
        name = self.collection(req)

        def build():
            body = need_object(req.json(), "")
            parse_shard_key_selector(body, req)
            points = []
            if body.get("batch") is not None:
                batch = need_object(body["batch"], "batch")
                ids = parse_point_ids(field(batch, "ids", "batch"), "batch.ids")
                vectors = field(batch, "vectors", "batch")
                payloads = batch.get("payloads")
                if isinstance(vectors, dict):  # named: {name: [vector per point]}
                    for vname, vs in vectors.items():
                        if len(need_list(vs, f"batch.vectors.{vname}")) != len(ids):
                            raise validation_error("batch", "number of ids and vectors must be "
                                                   f"equal ({len(ids)} != {len(vs)})")
                    per_point = [{vname: vs[i] for vname, vs in vectors.items()}
                                 for i in range(len(ids))]
                else:
                    per_point = need_list(vectors, "batch.vectors")
                    if len(per_point) != len(ids):
                        raise validation_error("batch", "number of ids and vectors must be "
                                               f"equal ({len(ids)} != {len(per_point)})")
                if payloads is not None and len(need_list(payloads, "batch.payloads")) != len(ids):
                    raise validation_error("batch", "number of ids and payloads must be equal "
                                           f"({len(ids)} != {len(payloads)})")
                for i, pid in enumerate(ids):
                    vector = parse_vector(per_point[i], f"batch.vectors[{i}]")
                    payload = parse_payload(payloads[i], f"batch.payloads[{i}]") if payloads else None
                    points.append(qe.Point(pid, vector, payload))
            elif body.get("points") is not None:
                for i, p in enumerate(need_list(body["points"], "points")):
                    where = f"points[{i}]"
                    p = need_object(p, where)
                    points.append(qe.Point(parse_point_id(field(p, "id", where), sub(where, "id")),
                                           parse_vector(field(p, "vector", where), sub(where, "vector")),
                                           parse_payload(p.get("payload"), sub(where, "payload"))))
            else:
                raise format_error("data did not match any variant of untagged enum "
                                   "PointInsertOperations (expected `points` or `batch`)")
            kwargs = {}
            if body.get("update_filter") is not None:
                kwargs["condition"] = parse_filter(body["update_filter"], "update_filter")
            if body.get("update_mode") is not None:
                mode = body["update_mode"]
                if mode not in UPDATE_MODES:
                    raise format_error(f"update_mode: unknown variant {describe(mode)}, expected "
                                       "one of `upsert`, `insert_only`, `update_only`")
                kwargs["update_mode"] = UPDATE_MODES[mode]
            return [qe.UpdateOperation.upsert_points(points, **kwargs)]

        return self.apply_update(req, name, build)

    def delete_points(self, req):
        def build():
            kind, sel = parse_points_selector(req.json(), "PointsSelector", req)
            if kind == "ids":
                return [qe.UpdateOperation.delete_points(sel)]
            return [qe.UpdateOperation.delete_points_by_filter(sel)]

        return self.apply_update(req, self.collection(req), build)

    def _payload_update(self, req, by_ids, by_filter):
        def build():
            body = need_object(req.json(), "")
            parse_shard_key_selector(body, req)
            payload = need_object(field(body, "payload", ""), "payload")
            key = body.get("key")
            if key is not None:
                need_str(key, "key")
            kind, sel = parse_ids_or_filter(body)
            return [(by_ids if kind == "ids" else by_filter)(sel, payload, key)]

        return self.apply_update(req, self.collection(req), build)

    def set_payload(self, req):
        return self._payload_update(req, qe.UpdateOperation.set_payload,
                                    qe.UpdateOperation.set_payload_by_filter)

    def overwrite_payload(self, req):
        return self._payload_update(req, qe.UpdateOperation.overwrite_payload,
                                    qe.UpdateOperation.overwrite_payload_by_filter)

    def delete_payload(self, req):
        def build():
            body = need_object(req.json(), "")
            parse_shard_key_selector(body, req)
            keys = [need_str(k, f"keys[{i}]")
                    for i, k in enumerate(need_list(field(body, "keys", ""), "keys"))]
            kind, sel = parse_ids_or_filter(body)
            if kind == "ids":
                return [qe.UpdateOperation.delete_payload(sel, keys)]
            return [qe.UpdateOperation.delete_payload_by_filter(sel, keys)]

        return self.apply_update(req, self.collection(req), build)

    def clear_payload(self, req):
        def build():
            kind, sel = parse_points_selector(req.json(), "PointsSelector", req)
            if kind == "ids":
                return [qe.UpdateOperation.clear_payload(sel)]
            return [qe.UpdateOperation.clear_payload_by_filter(sel)]

        return self.apply_update(req, self.collection(req), build)

    def create_index(self, req):
        def build():
            body = need_object(req.json(), "")
            name = need_str(field(body, "field_name", ""), "field_name")
            schema = field(body, "field_schema", "")
            kind = schema.get("type") if isinstance(schema, dict) else schema
            if kind not in PAYLOAD_SCHEMA_TYPES:
                raise format_error(f"field_schema: unknown payload schema {describe(kind)}, "
                                   f"expected one of {', '.join(PAYLOAD_SCHEMA_TYPES)}")
            return [qe.UpdateOperation.create_field_index(name, PAYLOAD_SCHEMA_TYPES[kind])]

        return self.apply_update(req, self.collection(req), build)

    def delete_index(self, req):
        field_name = req.params["field_name"]
        return self.apply_update(req, self.collection(req),
                                 lambda: [qe.UpdateOperation.delete_field_index(field_name)])

    # -- reads ----------------------------------------------------------------------------------

    @staticmethod
    def record(r) -> dict:
        out = {"id": point_id_json(r.id)}
        if r.payload is not None:
            out["payload"] = r.payload
        if r.vector is not None:
            out["vector"] = r.vector
        if r.order_value is not None:
            out["order_value"] = r.order_value
        return out

    def _read(self, req, name: str, fn):
        req.check_query()
        with self.store.get(name).use() as col:
            try:
                return fn(col.shard)
            except ApiError:
                raise
            except Exception as e:
                raise engine_error(e) from None

    def get_point(self, req):
        name = self.collection(req)
        pid = parse_point_id_text(req.params["id"])

        def read(shard):
            found = shard.retrieve([pid], True, True)
            if not found:
                raise not_found(f"Point with id {point_id_json(pid)} does not exists!")
            return self.record(found[0])

        return self._read(req, name, read)

    def get_points(self, req):
        name = self.collection(req)
        body = need_object(req.json(), "")
        parse_shard_key_selector(body, req)
        ids = parse_point_ids(field(body, "ids", ""), "ids")
        # Qdrant's retrieve defaults: payload off (despite the docs), vectors off.
        with converting():
            with_payload = parse_with_payload(body.get("with_payload"), "with_payload", False)
        with_vector = parse_with_vector(body.get("with_vector", body.get("with_vectors")),
                                        "with_vector", False)
        if not ids:
            return self._read(req, name, lambda shard: [])
        return self._read(req, name, lambda shard: [
            self.record(r) for r in shard.retrieve(ids, with_payload, with_vector)])

    def count_points(self, req):
        name = self.collection(req)
        body = need_object(req.json(), "")
        parse_shard_key_selector(body, req)
        exact = need_bool(body["exact"], "exact") if body.get("exact") is not None else True
        with converting():
            flt = parse_filter(body.get("filter"))
        return self._read(req, name, lambda shard: {"count": shard.count(qe.CountRequest(exact, flt))})

    def scroll_points(self, req):
        name = self.collection(req)
        body = need_object(req.json(), "")
        parse_shard_key_selector(body, req)
        limit = parse_limit(body.get("limit"), "limit", 10)
        offset = body.get("offset")
        offset = parse_point_id(offset, "offset") if offset is not None else None
        with converting():
            order_by = body.get("order_by")
            if order_by is not None:
                if isinstance(order_by, str):
                    order_by = {"key": order_by}
                ob = need_object(order_by, "order_by")
                direction = ob.get("direction") or "asc"
                if direction not in ("asc", "desc"):
                    raise format_error(f"order_by.direction: unknown variant {describe(direction)}, "
                                       "expected `asc` or `desc`")
                order_by = qe.OrderBy(need_str(field(ob, "key", "order_by"), "order_by.key"),
                                      qe.Direction.Asc if direction == "asc" else qe.Direction.Desc,
                                      ob.get("start_from"))
            request = qe.ScrollRequest(
                offset=offset, limit=limit, filter=parse_filter(body.get("filter")),
                with_payload=parse_with_payload(body.get("with_payload"), "with_payload", True),
                with_vector=parse_with_vector(body.get("with_vector", body.get("with_vectors")),
                                              "with_vector", False),
                order_by=order_by)

        def read(shard):
            records, next_offset = shard.scroll(request)
            return {"points": [self.record(r) for r in records],
                    "next_page_offset": None if next_offset is None else point_id_json(next_offset)}

        return self._read(req, name, read)

    # -- search ---------------------------------------------------------------------------------
    # Scoring, filtering and ordering are the engine's own (EdgeShard.search / EdgeShard.query).

    @staticmethod
    def scored(p) -> dict:
        """A ScoredPoint: a record with its version and score; like Qdrant, payload and vector only
        when asked for."""
        return {"version": p.version, "score": p.score, **Api.record(p)}

    @staticmethod
    def search_options(body: dict) -> dict:
        """The fields search and query share, as qdrant_edge keyword arguments."""
        threshold = body.get("score_threshold")
        return {
            "offset": need_uint(body["offset"], "offset") if body.get("offset") is not None else 0,
            "filter": parse_filter(body.get("filter")),
            "params": parse_search_params(body.get("params")),
            # Qdrant's search and query defaults: no payload, no vector.
            "with_payload": parse_with_payload(body.get("with_payload"), "with_payload", False),
            "with_vector": parse_with_vector(body.get("with_vector", body.get("with_vectors")),
                                             "with_vector", False),
            "score_threshold": None if threshold is None else need_number(threshold, "score_threshold"),
        }

    def search_points(self, req):
        """POST /points/search (deprecated in Qdrant, still served by 1.19; not in its spec)."""
        name = self.collection(req)
        body = need_object(req.json(), "")
        parse_shard_key_selector(body, req)
        with converting():
            vector, using = parse_named_vector(field(body, "vector", ""))
            limit = parse_limit(body.get("limit", body.get("top")), "limit", None)
            request = qe.SearchRequest(qe.Query.Nearest(vector, using=using), limit,
                                       **self.search_options(body))
        return self._read(req, name, lambda shard: [self.scored(p) for p in shard.search(request)])

    def query_points(self, req):
        """POST /points/query: nearest to a vector or to a stored point, or no query (by id)."""
        name = self.collection(req)
        body = need_object(req.json(), "")
        parse_shard_key_selector(body, req)
        for unsupported in ("prefetch", "lookup_from"):
            if body.get(unsupported) is not None:
                raise bad_request(f"{unsupported} is not supported by qdrant-standin")
        with converting():
            query = parse_query_input(body.get("query"))
            using = need_str(body["using"], "using") if body.get("using") is not None else None
            limit = parse_limit(body.get("limit"), "limit", 10)
            options = self.search_options(body)

        def read(shard):
            nearest = None
            if query is not None:
                kind, value = query
                if kind == "id":
                    vector = self.stored_vector(shard, value, using, self.store.get(name))
                    # Like Qdrant, the point the query refers to is not among the results.
                    options["filter"] = qe.Filter(
                        must=[options["filter"]] if options["filter"] is not None else None,
                        must_not=[qe.HasIdCondition({value})])
                else:
                    vector = value
                nearest = qe.Query.Nearest(vector, using=using)
            points = shard.query(qe.QueryRequest(limit, query=nearest, **options))
            return {"points": [self.scored(p) for p in points]}

        return self._read(req, name, read)

    @staticmethod
    def stored_vector(shard, pid, using: str | None, col: Collection) -> list:
        """The vector `using` (default: the unnamed one) of point `pid`, for a query by id."""
        vectors = col.meta["config"]["params"]["vectors"]
        names = {""} if "size" in vectors and not isinstance(vectors["size"], dict) else set(vectors)
        vector_name = using or ""
        if vector_name not in names:
            raise bad_input(f"Not existing vector name error: {vector_name}")
        found = shard.retrieve([pid], False, True)
        if not found:
            raise not_found(f"No point with id {point_id_json(pid)} found")
        vector = found[0].vector
        if isinstance(vector, dict):
            vector = vector.get(vector_name)
        if not isinstance(vector, list):
            raise not_found(f"Vector with name {json.dumps(vector_name)} for point")
        return vector

    # -- test-only admin endpoints ----------------------------------------------------------

    def admin_faults(self, req):
        if req.method == "POST":
            self.faults.set(validate_faults(parse_json_body(req.body)))
        elif req.method == "DELETE":
            self.faults.clear()
        return self.faults.snapshot()

    def admin_stats(self, req):
        if req.method == "DELETE":
            self.stats.reset()
        return self.stats.snapshot()

    def admin_requests(self, req):
        if req.method == "DELETE":
            self.requests.clear()
        return self.requests.snapshot()


# (method, path template as in Qdrant's OpenAPI spec, Api method name, is a points update)
ROUTES = [
    ("GET", "/", "root", False),
    ("GET", "/healthz", "healthz", False),
    ("GET", "/livez", "healthz", False),
    ("GET", "/readyz", "readyz", False),
    ("GET", "/collections", "list_collections", False),
    ("GET", "/collections/{collection_name}", "get_collection", False),
    ("PUT", "/collections/{collection_name}", "create_collection", False),
    ("DELETE", "/collections/{collection_name}", "delete_collection", False),
    ("GET", "/collections/{collection_name}/exists", "collection_exists", False),
    ("PUT", "/collections/{collection_name}/index", "create_index", True),
    ("DELETE", "/collections/{collection_name}/index/{field_name}", "delete_index", True),
    ("PUT", "/collections/{collection_name}/points", "upsert_points", True),
    ("POST", "/collections/{collection_name}/points", "get_points", False),
    ("POST", "/collections/{collection_name}/points/delete", "delete_points", True),
    ("POST", "/collections/{collection_name}/points/payload", "set_payload", True),
    ("PUT", "/collections/{collection_name}/points/payload", "overwrite_payload", True),
    ("POST", "/collections/{collection_name}/points/payload/delete", "delete_payload", True),
    ("POST", "/collections/{collection_name}/points/payload/clear", "clear_payload", True),
    ("POST", "/collections/{collection_name}/points/count", "count_points", False),
    ("POST", "/collections/{collection_name}/points/scroll", "scroll_points", False),
    ("POST", "/collections/{collection_name}/points/search", "search_points", False),
    ("POST", "/collections/{collection_name}/points/query", "query_points", False),
    ("GET", "/collections/{collection_name}/points/{id}", "get_point", False),
    ("GET", "/__standin/faults", "admin_faults", False),
    ("POST", "/__standin/faults", "admin_faults", False),
    ("DELETE", "/__standin/faults", "admin_faults", False),
    ("GET", "/__standin/stats", "admin_stats", False),
    ("DELETE", "/__standin/stats", "admin_stats", False),
    ("GET", "/__standin/requests", "admin_requests", False),
    ("DELETE", "/__standin/requests", "admin_requests", False),
]


def _compile_routes():
    compiled = []
    for method, template, handler, is_update in ROUTES:
        rx = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
        compiled.append((method, re.compile(rx), template, handler, is_update))
    # literal templates first, so /points/delete wins over /points/{id}
    compiled.sort(key=lambda r: r[2].count("{"))
    return compiled


COMPILED_ROUTES = _compile_routes()


def match_route(method: str, path: str):
    """-> (template, handler name, path params, is_update), or None."""
    for m, rx, template, handler, is_update in COMPILED_ROUTES:
        if m != method:
            continue
        found = rx.match(path)
        if found:
            return template, handler, {k: unquote(v) for k, v in found.groupdict().items()}, is_update
    return None


def normalize_path(raw: str) -> str:
    """Like actix's NormalizePath::trim(): merge repeated slashes, drop a trailing slash."""
    path = re.sub(r"/{2,}", "/", raw)
    return path.rstrip("/") or "/"


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

class BodyTooLarge(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply sets Content-Length
    server_version = "qdrant-standin"
    timeout = 300  # idle keep-alive connections are closed after this many seconds

    # set on the class by make_server()
    api: Api
    api_key: str | None
    verbose: bool

    def version_string(self):
        return self.server_version

    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _log() when --verbose

    def log_message(self, format, *args):
        if self.verbose:
            log(f"{self.address_string()} {format % args}")

    # -- body -------------------------------------------------------------------------------

    def handle_expect_100(self):
        """Refuse an oversized body before the client sends it."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > BODY_LIMIT:
            self.close_connection = True
            self._reply_error(ApiError(400, self._too_large(int(length))))
            return False
        return super().handle_expect_100()

    @staticmethod
    def _too_large(length: int | None) -> str:
        if length is None:
            return f"JSON payload has exceeded limit ({BODY_LIMIT} bytes)."
        return f"JSON payload ({length} bytes) is larger than allowed (limit: {BODY_LIMIT} bytes)."

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, "Bad request: invalid Content-Length header")
        n = int(length)
        if n > BODY_LIMIT:
            raise BodyTooLarge(self._too_large(n))
        body = self.rfile.read(n)
        if len(body) != n:  # the client went away mid-body
            self.close_connection = True
            raise ConnectionError("incomplete request body")
        return body

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "Bad request: malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > BODY_LIMIT:
                raise BodyTooLarge(self._too_large(None))
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # CRLF after each chunk

    # -- replies ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self._status = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client is gone; nothing left to tell it
            self.close_connection = True
            self._status = "disconnected"

    def _reply_json(self, status: int, obj, headers: dict | None = None):
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self._send(status, body.encode("utf-8"), JSON_TYPE, headers)

    def _reply_error(self, err: ApiError):
        elapsed = time.monotonic() - getattr(self, "_t0", time.monotonic())
        self._reply_json(err.status, {"status": {"error": err.message}, "time": elapsed}, err.headers)

    def _lingering_close(self):
        """Close after replying without reading the body: stop writing, then drain what the
        client still sends for a moment, so that our reply is not lost to a TCP reset."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def _drop(self):
        """The `drop` fault: close the connection without any reply."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._status = "dropped"

    def _log(self, path: str):
        if self.verbose:
            ms = (time.monotonic() - self._t0) * 1000
            log(f"{self.client_address[0]} {self.command} {path} {self._status} {ms:.1f}ms")

    # -- dispatch ---------------------------------------------------------------------------

    def _authorized(self) -> str | None:
        """None if the request may pass, else the 401 text Qdrant would send."""
        key = self.headers.get("api-key")
        if key is None:
            auth = self.headers.get("Authorization", "")
            key = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if key is None:
            return "Must provide an API key or an Authorization bearer token"
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return "Invalid API key or JWT"
        return None

    def _dispatch(self):
        self._t0 = time.monotonic()
        self._status = None
        url = urlsplit(self.path)
        path = normalize_path(url.path)
        query = parse_qs(url.query, keep_blank_values=True)
        route = match_route(self.command, path)
        template = route[0] if route else "unmatched"
        admin = path.startswith("/__standin/")
        faulted = False
        req = None
        try:
            try:
                body = self._read_body()
            except BodyTooLarge as e:
                self.close_connection = True  # the unread body makes the connection unusable
                self._reply_error(ApiError(400, e.message))
                self._lingering_close()
                return
            req = Request(self.command, path, route[2] if route else {}, query, body)

            if not admin and path not in HEALTH_PATHS:
                wait_update = bool(route and route[3] and query.get("wait", [""])[-1] == "true")
                fault = self.api.faults.take(path, wait_update)
                if fault:
                    faulted = True
                    if fault.get("delay_ms"):
                        time.sleep(fault["delay_ms"] / 1000.0)
                    if fault.get("drop"):
                        return self._drop()
                    if "status" in fault:
                        headers = {}
                        if fault["status"] == 429 and "retry_after" in fault:
                            headers["Retry-After"] = str(int(-(-fault["retry_after"] // 1)))
                        raise ApiError(fault["status"], FAULT_STATUSES[fault["status"]], headers)
                    req.wait_timeout = bool(fault.get("wait_timeout"))
                if self.api_key is not None and path not in AUTH_WHITELIST:
                    denied = self._authorized()
                    if denied:
                        return self._send(401, denied.encode(), TEXT_TYPE)

            if route is None:
                raise not_found(f"no route for {self.command} {path}")
            result = getattr(self.api, route[1])(req)
            if isinstance(result, Raw):
                return self._send(result.status, result.body, result.content_type, result.headers)
            if admin:
                return self._reply_json(200, result)
            self._reply_json(200, {"result": result, "status": "ok",
                                   "time": time.monotonic() - self._t0})
        except ApiError as e:
            self._reply_error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            self._status = "disconnected"
        except Exception as e:  # a bug here must not reach the client as a traceback
            log(f"internal error on {self.command} {path}:\n{traceback.format_exc()}")
            self.close_connection = True
            self._reply_error(ApiError(500, f"Service internal error: {type(e).__name__}: {e}"))
        finally:
            if not admin:
                self.api.stats.record(f"{self.command} {template}", str(self._status), faulted)
                if path not in HEALTH_PATHS:
                    item = {"method": self.command, "path": path,
                            "wait": query.get("wait", [None])[-1],
                            "ordering": query.get("ordering", [None])[-1], "status": self._status}
                    if req is not None and req.shard_key is not ABSENT:
                        item["shard_key"] = req.shard_key
                    self.api.requests.record(item)
            self._log(path)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, store: Store, api_key: str | None, verbose: bool) -> Server:
    api = Api(store, Faults(), Stats())
    handler = type("StandinHandler", (Handler,), {"api": api, "api_key": api_key,
                                                  "verbose": verbose})
    return Server((host, port), handler)


def lock_data_dir(data: str):
    """One stand-in per data directory: two processes on one shard would corrupt it."""
    os.makedirs(data, exist_ok=True)
    f = open(os.path.join(data, ".standin.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"qdrant-standin: {data} is in use by another qdrant-standin")
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Qdrant stand-in REST server over qdrant-edge-py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6333, help="0 picks a free port")
    ap.add_argument("--data", required=True, help="directory for the collections")
    keys = ap.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help="require this key (header api-key or Bearer token)")
    keys.add_argument("--api-key-file", help="read the API key from this file")
    ap.add_argument("--verbose", action="store_true", help="log one line per request to stderr")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM; needs --tls-key)")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-client-ca", help="with --tls-cert: require a client certificate signed by this CA")
    args = ap.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        ap.error("--tls-cert and --tls-key go together; --tls-client-ca needs them")

    api_key = args.api_key
    if args.api_key_file:
        with open(args.api_key_file) as f:
            api_key = f.read().strip()
    if api_key == "":
        api_key = None  # like Qdrant: an empty key means no authentication

    data_lock = lock_data_dir(args.data)
    store = Store(args.data)
    server = make_server(args.host, args.port, store, api_key, args.verbose)
    scheme = "http"
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.tls_client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"qdrant-standin listening on {scheme}://{host}:{port}", flush=True)

    stop.wait()
    server.shutdown()
    server.server_close()
    store.close_all()  # waits for in-flight requests per collection, then flushes
    data_lock.close()
    if args.verbose:
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
