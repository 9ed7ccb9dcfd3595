"""Does a redraw pass? Fingerprint every builder under several seeds and compare each pair.

A snapshot is always recorded with ``torch.manual_seed(SEED)``; another torch release may draw
the same initialisers differently, and the comparison must not call that a change. Recording the
zoo under other seeds is the same situation, measured: every pair of seeds is compared as a
snapshot comparison would compare them (``diff_facts`` on the fingerprints), and any difference
is a false positive. The sweep also prints the largest score each statistic reached, in standard
errors, against the threshold (``SIGMAS``).

    python benchmarks/seed_sweep.py --out /tmp/sweep --seeds 0 1 2 3 4            # all builders
    python benchmarks/seed_sweep.py --out /tmp/sweep --seeds 0 1 --models resnet18 vit_b_16

Fingerprints are kept as JSON lines in ``--out`` (one file per seed), so an interrupted sweep
resumes where it stopped and the comparison can be rerun alone (``--compare-only``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from pytest_zoo.snapshot import collect_fingerprint, diff_facts
from pytest_zoo.snapshot.stats import SIGMAS, scores


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    return {entry["model"]: entry["fingerprint"] for entry in map(json.loads, lines)}


def record(out: Path, seeds: list[int], models: list[str]) -> dict[int, dict[str, Any]]:
    done = {seed: _load(out / f"seed_{seed}.jsonl") for seed in seeds}
    for name in models:
        for seed in seeds:
            if name in done[seed]:
                continue
            start = time.perf_counter()
            fingerprint = collect_fingerprint(name, seed=seed)
            fingerprint.pop("seed", None)  # the one field that must differ
            with (out / f"seed_{seed}.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"model": name, "fingerprint": fingerprint}) + "\n")
            done[seed][name] = fingerprint
            print(f"{name} seed {seed}: {time.perf_counter() - start:.1f}s", flush=True)
    return done


def compare(done: dict[int, dict[str, Any]], models: list[str]) -> int:
    """Print the false positives and the largest scores; return how many differences there were."""
    pairs = list(itertools.combinations(sorted(done), 2))
    tensors = differences = 0
    worst: dict[str, tuple[float, str]] = {}
    for a, b in pairs:
        for name in models:
            before, after = done[a].get(name), done[b].get(name)
            if before is None or after is None:
                continue
            for change in diff_facts({"fingerprint": before}, {"fingerprint": after}):
                differences += 1
                print(f"FALSE POSITIVE seeds {a}/{b} {name}: {change}")
            for key, summary in before["params"].items():
                tensors += 1
                for stat, z in scores(summary, after["params"][key]).items():
                    if z > worst.get(stat, (-1.0, ""))[0]:
                        worst[stat] = (z, f"{name} {key} seeds {a}/{b}")
    print(
        f"{len(pairs)} seed pair(s) x {len(models)} builder(s): {tensors} tensor comparisons, "
        f"{differences} difference(s)"
    )
    for stat, (z, where) in sorted(worst.items()):
        print(f"  largest {stat} score: {z:.2f} standard errors (threshold {SIGMAS:g}) at {where}")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for the fingerprints")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="*", help="builders (default: all of list_models())")
    parser.add_argument("--compare-only", action="store_true", help="compare what is recorded")
    args = parser.parse_args()
    from torchvision.models import list_models

    models = args.models or list_models()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare_only:
        done = {seed: _load(args.out / f"seed_{seed}.jsonl") for seed in args.seeds}
    else:
        done = record(args.out, args.seeds, models)
    return 1 if compare(done, models) else 0


if __name__ == "__main__":
    sys.exit(main())
