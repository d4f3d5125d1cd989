"""The official OpenFeature Python SDK and its OFREP provider against a
running abacus: typed getters, details, errors, and the bulk route with
its ETag. Exits non-zero (with the failed check) if anything differs.

    python3 tests/openfeature/check.py BASE_URL INGEST_KEY

The server must hold these experiments (tests/it/openfeature.rs makes them):
- `checkout`, running, 50/50, payloads true / false (booleans);
- `layout`, running, variants `grid` / `list` without payloads (strings);
- `limit`, running, payloads 10 / 20 (integers) with `u-forced` forced to
  the second;
- `theme`, a draft, payloads {"dark": false} / {"dark": true};
- `narrow`, running with coverage 0.
"""
import sys

import requests
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

base, key = sys.argv[1], sys.argv[2]
api.set_provider(OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {key}"}))
client = api.get_client()
unit = EvaluationContext(targeting_key="u-1", attributes={"plan": "pro"})


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


# Typed getters: the payload is the value.
value = client.get_boolean_value("checkout", False, unit)
check(isinstance(value, bool), f"checkout is a boolean: {value!r}")
details = client.get_boolean_details("checkout", False, unit)
check(details.reason == Reason.SPLIT, f"checkout splits: {details}")
check(details.variant in ("on", "off"), f"checkout's variant: {details}")
check(details.value == (details.variant == "on"), f"checkout's value follows its variant: {details}")
check(details.flag_metadata.get("reason") in ("hashed", "sticky"), f"abacus's reason: {details}")
check(details.flag_metadata.get("inExperiment") is True, f"in the experiment: {details}")
# Stable for the unit.
check(client.get_boolean_value("checkout", not value, unit) == value, "the same answer again")

layout = client.get_string_details("layout", "none", unit)
check(layout.value in ("grid", "list") and layout.value == layout.variant, f"a variant without payload serves its key: {layout}")

check(client.get_integer_value("limit", 0, unit) in (10, 20), "an integer payload")
forced = client.get_integer_details("limit", 0, EvaluationContext(targeting_key="u-forced"))
check((forced.value, forced.reason) == (20, Reason.TARGETING_MATCH), f"a forced unit: {forced}")

draft = client.get_object_details("theme", {"dark": None}, unit)
check((draft.value, draft.reason) == ({"dark": False}, Reason.DISABLED), f"a draft serves the control, DISABLED: {draft}")

outside = client.get_string_details("narrow", "caller-default", unit)
check((outside.value, outside.reason) == ("caller-default", Reason.DEFAULT), f"outside the coverage: the caller's default: {outside}")

# Errors: the default value, and the error code.
missing = client.get_boolean_details("no-such-flag", True, unit)
check((missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND), f"not found: {missing}")
anonymous = client.get_boolean_details("checkout", True, EvaluationContext())
check((anonymous.value, anonymous.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING), f"no targeting key: {anonymous}")
mismatch = client.get_integer_details("layout", 7, unit)
check((mismatch.value, mismatch.error_code) == (7, ErrorCode.TYPE_MISMATCH), f"a string asked as an integer: {mismatch}")

# A wrong key: the provider's error, no body from the server.
api.set_provider(OFREPProvider(base, headers_factory=lambda: {"X-API-Key": "wrong"}))
refused = api.get_client().get_boolean_details("checkout", True, unit)
check(refused.value is True and refused.error_code == ErrorCode.GENERAL, f"a wrong key: {refused}")
api.set_provider(OFREPProvider(base, headers_factory=lambda: {"X-API-Key": key}))
check(api.get_client().get_boolean_value("checkout", not value, unit) == value, "X-API-Key is accepted")

# Bulk, with caching by ETag, as client-side providers poll it.
url = f"{base}/ofrep/v1/evaluate/flags"
headers = {"Authorization": f"Bearer {key}"}
first = requests.post(url, json={"context": {"targetingKey": "u-1"}}, headers=headers, timeout=5)
check(first.status_code == 200, f"bulk: {first.status_code} {first.text}")
flags = {f["key"]: f for f in first.json()["flags"]}
check(set(flags) == {"checkout", "layout", "limit", "theme", "narrow"}, f"every flag: {sorted(flags)}")
check(flags["checkout"]["value"] == value, f"bulk agrees with the single evaluation: {flags['checkout']}")
check("value" not in flags["narrow"], f"no value outside the coverage: {flags['narrow']}")
etag = first.headers.get("ETag")
check(etag, "bulk has an ETag")
again = requests.post(url, json={"context": {"targetingKey": "u-1"}}, headers={**headers, "If-None-Match": etag}, timeout=5)
check(again.status_code == 304 and not again.content, f"unchanged: {again.status_code}")
other = requests.post(url, json={"context": {"targetingKey": "u-2"}}, headers={**headers, "If-None-Match": etag}, timeout=5)
check(other.status_code in (200, 304), f"another unit: {other.status_code}")
bad = requests.post(url, data=b"{not json", headers={**headers, "Content-Type": "application/json"}, timeout=5)
check(bad.status_code == 400 and bad.json()["errorCode"] == "PARSE_ERROR", f"not JSON: {bad.status_code} {bad.text}")
print("openfeature: every check passed")
