"""A Python client generated from abacus's OpenAPI document, used against a
running server: create an experiment, start it, assign a unit, post an
event. Exits non-zero (with the failed step) if any
step fails.

    python3 tests/client/generated.py BASE_URL ADMIN_KEY

It generates the client itself, with the generator pinned in
tests/requirements.txt:

    openapi-python-client generate --url BASE_URL/openapi.json --meta none --output-path DIR
"""
import importlib
import subprocess
import sys
import tempfile

base, key = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
generated = subprocess.run(
    ["openapi-python-client", "generate", "--url", f"{base}/openapi.json",
     "--meta", "none", "--output-path", f"{out}/abacus_client"],
    capture_output=True, text=True)
if generated.returncode != 0:
    sys.exit(f"generating the client failed:\n{generated.stdout}\n{generated.stderr}")
sys.path.insert(0, out)

client_module = importlib.import_module("abacus_client")
create = importlib.import_module("abacus_client.api.experiments.create_experiment")
start = importlib.import_module("abacus_client.api.experiments.start_experiment")
assign_one = importlib.import_module("abacus_client.api.assignments.assign_one")
accept = importlib.import_module("abacus_client.api.events.accept")
models = importlib.import_module("abacus_client.models")

client = client_module.AuthenticatedClient(base_url=base, token=key)


def step(response, expected, what):
    if response.status_code != expected:
        sys.exit(f"{what}: {response.status_code} {response.content!r}")
    return response.parsed


experiment = step(create.sync_detailed(client=client, body=models.ExperimentIn(
    key="generated", name="Generated client",
    variants=[models.Variant(key="control", weight=1.0), models.Variant(key="green", weight=1.0)],
)), 201, "create")
assert experiment.key == "generated" and experiment.status.value == "draft", experiment

started = step(start.sync_detailed("generated", client=client), 200, "start")
assert started.status.value == "running", started

assignment = step(assign_one.sync_detailed("generated", client=client, unit_id="alice"), 200, "assign")
assert assignment.variant in ("control", "green") and assignment.in_experiment, assignment

event = models.EventIn(type_="conversion", unit_id="alice", experiment="generated")
accepted = step(accept.sync_detailed(client=client, body=event), 202, "post an event")
assert accepted.accepted == 1, accepted

print(f"generated client: created, started, assigned alice to {assignment.variant}, posted a conversion")
