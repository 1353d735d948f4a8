#!/usr/bin/env python3
"""Turn the stdout of scripts/bench-ab.sh (device side) into a bench/results JSON.

usage: ab-json.py OUT.json --device NAME --what TEXT [--build NAME=DESCRIPTION ...] < stdout

Keeps every summary row under its build's name and round ("== NAME" lines start a build's rows;
the n-th such line of a build starts its round n), and the test and sanitizer lines as they were
printed, so the file holds what the call measured and checked, nothing recomputed. Exits 1 when
a test or sanitizer line reports a non-zero status, unless --allow-fail (the file is written
either way), and when a declared build has no rows or a row's build was not declared.
"""
import argparse
import datetime
import json
import re
import sys

ROW = re.compile(r"^(\S+)\s+([a-z_]+)\s+(f32|f16|bf16)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                 r"([\d.]+|nan)\s+([\d.]+|nan)\s+([\d.]+|nan)\s+([\d.]+|nan)\s")


def number(text):
    return None if text == "nan" else float(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", required=True)
    ap.add_argument("--what", required=True)
    ap.add_argument("--build", action="append", default=[], help="NAME=what that build (or variant) is")
    ap.add_argument("--allow-fail", action="store_true", help="exit 0 even when a test failed")
    args = ap.parse_args()

    rows, tests, current, rounds = [], [], None, {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("== "):
            current = line[3:].strip()
            rounds[current] = rounds.get(current, 0) + 1
            continue
        if line.startswith(("test ", "sanitizer ", "SANITIZE:", "bench ", "BUILDS:")):
            tests.append(line)
            continue
        m = ROW.match(line)
        if not m or current is None:
            continue
        rows.append({
            "build": current, "round": rounds[current], "case": m[1], "op": m[2], "dtype": m[3],
            "m": int(m[4]), "k": int(m[5]), "n": int(m[6]), "rank": int(m[7]),
            "fused_us": number(m[8]), "fused_host_us": number(m[9]), "base_us": number(m[10]),
            "unfused_us": number(m[11]),
        })
    if not rows:
        sys.exit("ab-json.py: no summary rows in the input")
    # NAME=DESCRIPTION; a NAME may hold "=" itself (bench-ab.sh's VARIANTS, "new:VAR=VALUE"): the
    # longest build name of the rows that the argument starts with, else up to the first "="
    names = {r["build"] for r in rows}
    builds = {}
    for b in args.build:
        known = [n for n in names if b.startswith(n + "=")]
        name = max(known, key=len) if known else b.partition("=")[0]
        builds[name] = {"what": b[len(name) + 1:]}
    doc = {"device": args.device, "backend": "cuda", "date": datetime.date.today().isoformat(),
           "what": args.what, "builds": builds, "tests": tests, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    problems = [t for t in tests if re.search(r"\brc=(?!0\b)\d+", t) or t.startswith(("SANITIZE:", "BUILDS:"))
                or re.search(r"ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]", t)]
    problems += [f"build {b}: no rows" for b in builds if not any(r["build"] == b for r in rows)]
    problems += [f"build {b}: rows but no --build" for b in sorted({r["build"] for r in rows} - set(builds))]
    for p in problems:
        print("ab-json.py:", p, file=sys.stderr)
    if problems and not args.allow_fail:
        sys.exit(1)


if __name__ == "__main__":
    main()
