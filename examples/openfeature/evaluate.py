"""Evaluate abacus experiments as feature flags with OpenFeature (Python).

    python3 -m pip install openfeature-sdk==0.10.0 openfeature-provider-ofrep==0.3.0
    ABACUS_URL=http://127.0.0.1:8080 ABACUS_KEY=... python3 examples/openfeature/evaluate.py checkout user-42

The flag is an experiment's key and the targeting key its unit id; the
value is the variant's payload (its key when it has none).
"""
import os
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

url = os.environ.get("ABACUS_URL", "http://127.0.0.1:8080")
key = os.environ.get("ABACUS_KEY", "")
flag, unit = sys.argv[1], sys.argv[2]

api.set_provider(OFREPProvider(url, headers_factory=lambda: {"Authorization": f"Bearer {key}"} if key else {}))
client = api.get_client()
details = client.get_string_details(flag, "control", EvaluationContext(targeting_key=unit))
print(f"{flag} for {unit}: value={details.value!r} variant={details.variant} "
      f"reason={details.reason} abacus={details.flag_metadata.get('reason')} error={details.error_code}")
