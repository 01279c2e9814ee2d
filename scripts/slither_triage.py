"""Compares a slither JSON report with the committed triage of reviewed false positives.

A finding is accepted when an entry names its detector, its location (`Contract.member`, the
first element slither reports) and a fragment of the code it quotes. Every High or Medium finding
must be accepted; every entry must still accept something, so the triage cannot go stale.
Exit status 1 on either failure, with one line per offending finding or entry.
"""

import json
import sys
from collections import Counter

BLOCKING = ("High", "Medium")


def location(finding):
    element = finding["elements"][0] if finding["elements"] else {}
    parent = element.get("type_specific_fields", {}).get("parent", {}).get("name")
    name = element.get("name", "?")
    return f"{parent}.{name}" if parent else name


def accepts(entry, finding):
    return (
        entry["detector"] == finding["check"]
        and entry["location"] == location(finding)
        and entry["code"] in finding["description"]
    )


def main(report_path, triage_path):
    report = json.load(open(report_path))
    findings = report.get("results", {}).get("detectors", [])
    triage = json.load(open(triage_path))["accepted"]
    used = Counter()
    unaccepted = []
    for finding in findings:
        matches = [i for i, entry in enumerate(triage) if accepts(entry, finding)]
        used.update(matches)
        if finding["impact"] in BLOCKING and not matches:
            unaccepted.append(finding)
    stale = [entry for i, entry in enumerate(triage) if used[i] == 0]
    by_impact = Counter(f["impact"] for f in findings)
    print(
        "slither: "
        + ", ".join(f"{by_impact[i]} {i}" for i in ("High", "Medium", "Low", "Informational", "Optimization"))
        + f"; {sum(1 for f in findings if f['impact'] in BLOCKING) - len(unaccepted)} High/Medium accepted by"
        f" {len(triage)} triage entries"
    )
    for finding in unaccepted:
        first_line = finding["description"].strip().splitlines()[0]
        print(f"slither: NEW {finding['impact']} {finding['check']} at {location(finding)}: {first_line}")
    for entry in stale:
        print(f"slither: stale triage entry {entry['detector']} at {entry['location']} ({entry['code']!r})")
    return 1 if unaccepted or stale else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
