"""Check a real upgrade against what it must report (.ci/upgrade-expected.txt), line for line.

Usage: upgrade_check.py BEFORE.json AFTER.json COMPARE.xml COMPARE_EXIT_CODE EXPECTED.txt

BEFORE is the snapshot recorded on the old pair, AFTER the same after ``--zoo-snapshot-update`` on
the new one. Every difference the kit's own diff finds between them is one line ``model: field``
(plus ``before -> after`` outside fingerprints, whose values are draws); that set must equal the
expected file's lines, and the compare run must have failed exactly the models that have one.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_zoo.snapshot import diff_facts, load_snapshot


def found_lines(before_path: Path, after_path: Path) -> set[str]:
    before, after = load_snapshot(before_path), load_snapshot(after_path)
    lines = set()
    for model in sorted(set(before.models) | set(after.models)):
        if model not in before.models or model not in after.models:
            lines.add(f"{model}: {'added' if model in after.models else 'removed'}")
            continue
        for change in diff_facts(before.models[model], after.models[model]):
            shown = change.where if change.path[0] == "fingerprint" else str(change)
            lines.add(f"{model}: {shown}")
    return lines


def failed_models(junit: Path) -> set[str]:
    return {
        case.get("name", "")
        for case in ET.parse(junit).iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }


def main(before: str, after: str, junit: str, exit_code: str, expected_path: str) -> int:
    expected = {
        line.strip()
        for line in Path(expected_path).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    found = found_lines(Path(before), Path(after))
    problems = [f"  reported but not expected: {line}" for line in sorted(found - expected)]
    problems += [f"  expected but not reported: {line}" for line in sorted(expected - found)]
    changed = {line.split(":", 1)[0] for line in expected}
    failed = failed_models(Path(junit))
    if failed != changed:
        problems.append(f"  the compare run failed {sorted(failed)}, expected {sorted(changed)}")
    if int(exit_code) != (1 if changed else 0):
        problems.append(f"  the compare run exited {exit_code}")
    if problems:
        print(f"ci: upgrade: the differences are not {expected_path}:", *problems, sep="\n")
        return 1
    print(f"ci: upgrade: {len(found)} difference(s) in {len(changed)} model(s), as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
