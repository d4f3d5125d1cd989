"""GrowthBook's own answers, for abacus's GrowthBook bucketing to match.

Draws random experiments (seed, hash version 1 or 2, 2-5 variations with
weights that sum to 1, coverage, sometimes a namespace) and random unit
ids (ASCII, accented, CJK and emoji, so UTF-16 surrogate pairs are
covered), and asks the official `growthbook` Python SDK (pinned in
tests/requirements.txt) which variation each unit gets. Prints JSON:

    {"experiments": [{"seed", "hash_version", "weights", "coverage",
                      "namespace": [name, start, end] | null}],
     "units": [...],
     "expected": [[in_experiment, variation], ...]}   # experiment-major

    python3 tests/growthbook/oracle.py EXPERIMENTS UNITS SEED
"""
import json
import random
import sys

from growthbook import GrowthBook, Experiment

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789-_",
    "äöüßéèñçøåÆŒ",
    "漢字かなカナ한국어",
    "🙂🚀🎉👩‍💻𝄞",
]


def text(rng, low, high):
    return "".join(rng.choice(rng.choice(ALPHABETS)) for _ in range(rng.randint(low, high)))


def weights(rng, n):
    raw = [rng.randint(1, 100) for _ in range(n)]
    total = sum(raw)
    w = [round(x / total, 4) for x in raw[:-1]]
    return w + [round(1 - sum(w), 4)]


def main():
    experiments_n, units_n, seed = (int(a) for a in sys.argv[1:4])
    rng = random.Random(seed)
    experiments = []
    for _ in range(experiments_n):
        n = rng.randint(2, 5)
        ws = weights(rng, n)
        while min(ws) <= 0:
            ws = weights(rng, n)
        start = round(rng.random() * 0.5, 3)
        experiments.append({
            "seed": text(rng, 1, 12),
            "hash_version": rng.choice([1, 2]),
            "weights": ws,
            "coverage": rng.choice([1.0, round(rng.random(), 3)]),
            "namespace": rng.choice([None, [text(rng, 1, 8), start, round(start + 0.5, 3)]]),
        })
    units = [text(rng, 1, 24) for _ in range(units_n)]
    expected = []
    for e in experiments:
        spec = dict(
            key="oracle",
            variations=list(range(len(e["weights"]))),
            weights=e["weights"],
            coverage=e["coverage"],
            seed=e["seed"],
            hashVersion=e["hash_version"],
        )
        if e["namespace"]:
            spec["namespace"] = tuple(e["namespace"])
        experiment = Experiment(**spec)
        for unit in units:
            result = GrowthBook(attributes={"id": unit}).run(experiment)
            expected.append([result.inExperiment, result.variationId])
    json.dump({"experiments": experiments, "units": units, "expected": expected}, sys.stdout)


if __name__ == "__main__":
    main()
