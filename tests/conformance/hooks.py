"""schemathesis hooks for tests/it/conformance.rs.

HTTP cannot carry control characters in a header: the server's HTTP
parser refuses such a request with a bare 400 before any route sees it.
schemathesis sometimes generates them (generation.exclude-header-characters
does not reach every phase), so they are taken out of every header value.

Network traffic in tests goes to 127.0.0.1 only. A webhook subscription
is delivered to, so every URL a generated request subscribes goes to a
closed loopback port instead, its validity kept: a schema-valid body gets
a valid loopback URL; in a schema-violating body, a URL the document
allows keeps its shape with its host replaced (the server runs with
webhooks.allow_private, so it resolves no name), and one it does not allow
is sent as it is, for the server to refuse.
"""

import re
from urllib.parse import urlsplit, urlunsplit

import schemathesis
from schemathesis.generation import GenerationMode

LOOPBACK = "http://127.0.0.1:9/hook"


CONTROL = dict.fromkeys([*range(0x20), 0x7F])


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.headers:
        for name, value in case.headers.items():
            if isinstance(value, str):
                case.headers[name] = value.translate(CONTROL)
    if case.path != "/v1/webhooks" or case.method.upper() != "POST":
        return
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        return
    if case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE:
        body["url"] = LOOPBACK
        return
    schemas = case.operation.schema.raw_schema["components"]["schemas"]
    if not re.search(schemas["WebhookIn"]["properties"]["url"]["pattern"], body["url"]):
        return
    try:
        parts = urlsplit(body["url"])
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return
    if parts.hostname:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + "127.0.0.1" + port
        body["url"] = urlunsplit(parts._replace(netloc=netloc))
