#!/usr/bin/env python3
"""Turn the stdout of scripts/bench-ab.sh (device side) into a bench/results JSON.

usage: ab-json.py OUT.json --device NAME --what TEXT [--build NAME=DESCRIPTION ...] < stdout

Keeps every summary row of every round under its build's name ("== NAME" lines start a build's
rows), and the test lines ("test NAME-test_x rc=0 ...") as they were printed, so the file holds
what the call measured and checked, nothing recomputed.
"""
import argparse
import datetime
import json
import re
import sys

ROW = re.compile(r"^(\S+)\s+([a-z_]+)\s+(f32|f16|bf16)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                 r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", required=True)
    ap.add_argument("--what", required=True)
    ap.add_argument("--build", action="append", default=[], help="NAME=what that build is")
    args = ap.parse_args()

    builds = {}
    for b in args.build:
        name, _, desc = b.partition("=")
        builds[name] = {"what": desc}
    rows, tests, current, seen = [], [], None, {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("== "):
            current = line[3:].strip()
            continue
        if line.startswith("test "):
            tests.append(line[5:])
            continue
        m = ROW.match(line)
        if not m or current is None:
            continue
        key = (current,) + m.groups()[:7]
        seen[key] = seen.get(key, 0) + 1
        rows.append({
            "build": current, "round": seen[key], "case": m[1], "op": m[2], "dtype": m[3],
            "m": int(m[4]), "k": int(m[5]), "n": int(m[6]), "rank": int(m[7]),
            "fused_us": float(m[8]), "fused_host_us": float(m[9]), "base_us": float(m[10]),
            "unfused_us": float(m[11]),
        })
    if not rows:
        sys.exit("ab-json.py: no summary rows in the input")
    doc = {"device": args.device, "backend": "cuda", "date": datetime.date.today().isoformat(),
           "what": args.what, "builds": builds, "tests": tests, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
