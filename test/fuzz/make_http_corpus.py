#!/usr/bin/env python3
"""Write the seed corpus of the HTTP request fuzzer (test/fuzz/http_corpus/).

Each file is what http_request_fuzz.c reads: a route byte, a flags byte, a
limits byte, the header lines the flags ask for, then the body.  Run it after
changing the seeds; the files are committed.
"""
import gzip
import json
import os
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "http_corpus")

ROUTES = {"track": 0, "identify": 1, "page": 2, "screen": 3, "group": 4,
          "alias": 5, "batch": 6}
AUTH = {None: 0, "raw": 1, "basic": 2}
BODY = {"plain": 0, "gzip": 1, "raw-gzip": 2, "header": 3}
LIMITS = {"default": 0, "small": 1, "equal": 2, "tiny": 3}


def seed(route, body, auth=None, key=b"", enc="plain", zlib_framing=False,
         two_members=False, name=0, limits="default", split=32, encoding=b"", pad=0):
    flags = (AUTH[auth] | BODY[enc] << 2 | (0x10 if zlib_framing else 0)
             | (0x20 if two_members else 0) | name << 6)
    out = bytes([ROUTES[route] | ((12 + pad) << 3 if pad else 0), flags,
                 LIMITS[limits] | split << 2])
    if auth is not None:
        out += key + b"\n"
    if enc == "header":
        out += encoding + b"\n"
    if isinstance(body, str):
        body = body.encode()
    return out + body


def gz(data):
    """gzip with a fixed header time, so the files do not change each run"""
    return gzip.compress(data, 9, mtime=0)


def js(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


KEY = "cdp_3f2a9c0b1e7d4c55"
CTX = {"library": {"name": "analytics-node", "version": "6.2.0"}}
NODE_BATCH = {
    "batch": [
        {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"},
         "messageId": "node-1", "timestamp": "2026-12-01T10:00:00.000Z", "context": CTX},
        {"type": "track", "userId": "u1", "event": "Order Completed",
         "properties": {"revenue": 39.95, "currency": "EUR"}, "messageId": "node-2",
         "timestamp": "2026-12-01T10:00:01.000Z", "context": CTX},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "node-3"},
    ],
    "sentAt": "2026-12-01T10:00:02.000Z",
    "context": CTX,
}
RUDDER_BATCH = {
    "batch": [
        {"type": "track", "event": "Product Viewed", "anonymousId": "r-anon-1",
         "messageId": "rudder-1", "properties": {"sku": "A-1", "price": 10},
         "context": {"library": {"name": "rudder-sdk-js"}}},
        {"type": "screen", "userId": "r-user", "name": "Cart", "messageId": "rudder-2"},
        {"type": "group", "userId": "r-user", "groupId": "acme", "traits": {"plan": "pro"},
         "messageId": "rudder-3"},
    ],
    "writeKey": KEY,
    "sentAt": "2026-12-01T10:00:02.000Z",
}


def seeds():
    key = KEY.encode()
    yield "node_batch_basic", seed("batch", js(NODE_BATCH), "basic", key)
    yield "rudder_batch_gzip", seed("batch", js(RUDDER_BATCH), enc="gzip")
    yield "rudder_batch_zlib_deflate", seed("batch", js(RUDDER_BATCH), enc="gzip",
                                            zlib_framing=True, name=2)
    yield "batch_gzip_two_members", seed("batch", js(RUDDER_BATCH), enc="gzip",
                                         two_members=True, split=20)
    yield "batch_import_item_write_key", seed(
        "batch", js({"batch": [{"type": "track", "event": "e", "userId": "u",
                                "writeKey": KEY}]}))
    yield "batch_empty", seed("batch", js({"batch": [], "writeKey": KEY}))
    yield "batch_not_array", seed("batch", js({"batch": {"type": "track"}, "writeKey": KEY}))
    yield "batch_repeated_key", seed(
        "batch", '{"batch":[{"type":"track"},{"type":"track"}],"batch":[],"writeKey":"%s"}' % KEY)
    yield "batch_escaped_key", seed(
        "batch", '{"b\\u0061tch":[{"type":"page","userId":"u"}],"writeKey":"%s"}' % KEY)
    yield "batch_item_key_in_array", seed(
        "batch", '{"batch":[{"writeKey":{"k":1}},["not-a-key"]]}')
    yield "batch_small_limits_gzip", seed(
        "batch", js({"batch": [{"type": "track", "event": "x" * 300, "userId": "u"}] * 20,
                     "writeKey": KEY}), enc="gzip", limits="small")

    ajs = {"userId": "u-42", "event": "Signed Up", "properties": {"plan": "free"},
           "writeKey": KEY, "messageId": "ajs-1",
           "context": {"library": {"name": "analytics.js", "version": "4.1.0"}}}
    yield "ajs_track_body_key", seed("track", js(ajs))
    yield "ajs_track_typed", seed("track", js(dict(ajs, type="TRACK")))
    yield "ajs_track_type_mismatch", seed("track", js(dict(ajs, type="identify")))
    yield "ajs_track_type_null", seed("track", '{"type":null,"userId":"u","event":"e","writeKey":"%s"}' % KEY)
    yield "ajs_track_type_then_null", seed(
        "track", '{"type":"track","userId":"u","event":"e","type":null,"writeKey":"%s"}' % KEY)
    yield "track_with_batch_key", seed(
        "track", js({"userId": "u", "event": "e",
                     "batch": [{"type": "identify", "userId": "someone-else"}]}), "basic", key)
    yield "track_with_escaped_batch_key", seed(
        "track", '{"userId":"u","event":"e","\\u0062atch":null}', "basic", key)
    yield "ajs_track_no_event", seed("track", js({"userId": "u", "writeKey": KEY}))
    yield "ajs_page_gzip", seed("page", js({"anonymousId": "a", "name": "Pricing",
                                            "properties": {"path": "/pricing"}, "writeKey": KEY}),
                                enc="gzip", name=1)
    yield "ajs_screen_number_id", seed("screen", js({"userId": 12345, "name": "Home"}), "basic", key)
    yield "type_not_string", seed("track", js({"type": True, "userId": "u", "event": "e"}),
                                  "basic", key)
    yield "event_number", seed("track", js({"userId": "u", "event": 1}), "basic", key)
    yield "identify_basic", seed("identify", js({"userId": "u1", "traits": {"name": "Ada"}}),
                                 "basic", key)
    yield "identify_traits_not_object", seed("identify", js({"userId": "u1", "traits": [1]}),
                                             "basic", key)
    yield "identify_empty_object", seed("identify", "{}", "basic", key)
    yield "alias_ok", seed("alias", js({"previousId": "anon-1", "userId": "u1"}), "basic", key)
    yield "alias_missing_previous", seed("alias", js({"userId": "u1"}), "basic", key)
    yield "group_ok", seed("group", js({"userId": "u1", "groupId": "g1",
                                        "traits": {"employees": 20}}), "basic", key)
    yield "group_missing_group_id", seed("group", js({"userId": "u1"}), "basic", key)
    yield "message_id_too_long", seed("track", js({"userId": "u", "event": "e",
                                                   "messageId": "m" * 101}), "basic", key)
    yield "auth_raw_bearer", seed("track", js({"userId": "u", "event": "e"}), "raw",
                                  b"Bearer abc")
    yield "auth_raw_bad_base64", seed("track", js({"userId": "u", "event": "e"}), "raw",
                                      b"Basic !!!")
    yield "auth_empty_key", seed("track", js({"userId": "u", "event": "e"}), "basic", b"")
    yield "no_key", seed("track", js({"userId": "u", "event": "e"}))

    yield "bad_json", seed("track", '{"userId":"u",', "basic", key)
    yield "bad_json_trailing", seed("batch", '{"batch":[]} x', "basic", key)
    yield "not_object", seed("batch", "[1,2,3]", "basic", key)
    yield "deep_nesting", seed("track", '{"userId":"u","event":"e","properties":' +
                               '{"a":' * 70 + "1" + "}" * 71, "basic", key)
    # CDP_HTTP_MAX_JSON_DEPTH (512) levels in all, and one more
    item = '{"type":"track","userId":"u","event":"e","properties":{"a":%s}}'
    yield "batch_item_64_deep", seed(
        "batch", '{"batch":[%s,%s]}' % (item % "1", item % ("[" * 62 + "]" * 62)), "basic", key)
    yield "batch_at_depth_limit", seed(
        "batch", '{"batch":[%s,%s]}' % (item % "1", item % ("[" * 508 + "]" * 508)), "basic", key)
    yield "batch_over_depth_limit", seed(
        "batch", '{"batch":[%s,%s]}' % (item % "1", item % ("[" * 509 + "]" * 509)), "basic", key)
    yield "single_at_depth_limit", seed("track", item % ("[" * 510 + "]" * 510), "basic", key)
    yield "single_over_depth_limit", seed("track", item % ("[" * 511 + "]" * 511), "basic", key)
    yield "deep_nesting_60000", seed("batch", "[" * 60000)
    yield "deep_nesting_ok", seed("track", '{"userId":"u","event":"e","properties":' +
                                  '[' * 60 + "1" + "]" * 60 + "}", "basic", key)
    yield "huge_numbers", seed("track", '{"userId":1e400,"event":"e","properties":{"n":-' +
                               "9" * 400 + ',"f":1.5e-400}}', "basic", key)
    good = '{"type":"track","userId":"u","event":"e"}'
    yield "batch_item_nul_escape", seed(
        "batch", '{"batch":[%s,{"type":"track","userId":"u","event":"a\\u0000b"}]}' % good,
        "basic", key)
    yield "batch_item_lone_surrogate", seed(
        "batch", '{"batch":[%s,{"type":"page","userId":"\\udc00\\ud83d\\ud83d"}]}' % good,
        "basic", key)
    yield "batch_item_surrogate_pair", seed(
        "batch", '{"batch":[%s,{"type":"page","userId":"\\ud83d\\ude00"}]}' % good,
        "basic", key)
    yield "batch_write_key_nul_escape", seed(
        "batch", '{"batch":[%s],"writeKey":"%s\\u0000"}' % (good, KEY))
    yield "unicode_escapes", seed("identify", '{"userId":"\\u00e9\\ud83d\\ude00","traits":'
                                  '{"name":"\\u4e2d\\u6587"}}', "basic", key)
    yield "unicode_lone_surrogate", seed("identify", '{"userId":"\\ud83d x"}', "basic", key)
    yield "unicode_nul_escape", seed("track", '{"userId":"u","event":"a\\u0000b"}', "basic", key)
    yield "invalid_utf8", seed("track", b'{"userId":"\xc3\x28","event":"e"}', "basic", key)
    yield "nul_byte", seed("track", b'{"userId":"u\x00","event":"e"}', "basic", key)
    yield "empty_body", seed("track", b"", "basic", key)
    yield "empty_body_gzip", seed("batch", b"", enc="gzip")
    at_limit = '{"userId":"u","event":"e","properties":{"p":"%s"}}'
    at_limit %= "x" * (1024 - len(at_limit % ""))
    yield "single_at_event_limit", seed("track", at_limit, "basic", key, limits="small")
    typed = '{"type":"track","userId":"u","event":"e","properties":{"p":"%s"}}'
    typed %= "x" * (1024 - len(typed % ""))
    yield "single_at_event_limit_typed", seed("track", typed, "basic", key, limits="small")
    at_limit = '{"userId":"u","event":"e","p":"%s"}'
    at_limit %= "x" * (64 - len(at_limit % ""))
    yield "single_at_tiny_limit", seed("track", at_limit, "basic", key, limits="tiny")
    yield "too_large_single", seed("track", js({"userId": "u", "event": "e",
                                                "properties": {"p": "x" * 1200}}),
                                   "basic", key, limits="small")

    yield "gzip_padded_over_ratio", seed("batch", js(RUDDER_BATCH), enc="gzip", pad=2)
    yield "gzip_padded_over_request", seed("batch", js(RUDDER_BATCH), enc="gzip", pad=3)
    yield "padded_small_limits", seed("batch", js(RUDDER_BATCH), "basic", key, pad=1,
                                      limits="small")
    bomb = gz(b"{" + b" " * 300000 + b"}")
    yield "gzip_bomb_small", seed("batch", bomb, enc="raw-gzip")
    body = gz(js(RUDDER_BATCH))
    yield "gzip_truncated", seed("batch", body[: len(body) // 2], enc="raw-gzip")
    yield "gzip_trailing_garbage", seed("batch", body + b"garbage", enc="raw-gzip")
    yield "gzip_multi_member", seed(
        "batch", gz(b'{"batch":[{"type":"track",') +
        gz(('"event":"e","userId":"u"}],"writeKey":"%s"}' % KEY).encode()),
        enc="raw-gzip")
    yield "zlib_raw", seed("batch", zlib.compress(js(RUDDER_BATCH)), enc="raw-gzip")
    yield "not_gzip", seed("batch", js(RUDDER_BATCH), enc="raw-gzip")
    yield "encoding_br", seed("batch", js(RUDDER_BATCH), enc="header", encoding=b"br")
    yield "encoding_identity", seed("batch", js(RUDDER_BATCH), name=1)
    yield "encoding_utf8_name", seed("batch", js(RUDDER_BATCH), enc="header",
                                     encoding=("gzip-" + "ï" * 40).encode())
    yield "encoding_not_utf8", seed("screen", b"", enc="header", encoding=b"\xff\xf7/C?")
    # the profile API: {identifier} from the Content-Encoding line, a read key
    rk = b"cdp_rk_5e1f0c2a"
    yield "profile_email_escaped", seed("track", b"", "raw", b"Bearer " + rk, enc="header",
                                        encoding=b"email:alice%40example.com")
    yield "profile_basic_key", seed("track", b"", "basic", rk, enc="header",
                                    encoding=b"user_id:a%2Fb%20%C3%BC")
    yield "profile_nul_escape", seed("track", b"", "raw", b"Bearer " + rk, enc="header",
                                     encoding=b"user_id:a%00b")
    yield "profile_bad_escape", seed("track", b"", "raw", b"Bearer " + rk, enc="header",
                                     encoding=b"user_id:%zz%4")
    yield "profile_not_utf8", seed("track", b"", "raw", b"Bearer " + rk, enc="header",
                                   encoding=b"user_id:%ff%C3")
    yield "profile_long_escaped", seed("track", b"", "raw", b"Bearer " + rk, enc="header",
                                       encoding=b"t:" + b"%41" * 1099)
    yield "profile_no_colon_slashes", seed("track", b"", "raw", b"bearer  " + rk + b"  ",
                                           enc="header", encoding=b"x/traits/y")
    yield "profile_basic_long_key", seed("track", b"", "basic", b"k" * 30000)
    yield "type_mismatch_utf8", seed("track", js({"type": "x" + "é" * 30, "userId": "u",
                                                  "event": "e"}), "basic", key)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.unlink(os.path.join(OUT, name))
    for name, data in seeds():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
