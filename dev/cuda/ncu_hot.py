#!/usr/bin/env python3
"""Where a kernel's warps stall, by SASS instruction, from an ncu report taken with
`--set full --import-source yes`: the source page as CSV (`ncu -i REP --page source --csv
--print-source sass`) on stdin, the hottest instructions and the share of each opcode on stdout.

    ncu -i rep.ncu-rep --page source --csv --print-source sass | python3 dev/cuda/ncu_hot.py [top]
"""
import csv
import sys
from collections import Counter


def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    rows = list(csv.reader(sys.stdin))
    head = next((i for i, r in enumerate(rows) if "Source" in r and "Address" in r), None)
    if head is None:
        sys.exit("no source table on stdin (was the report taken with --import-source yes?)")
    cols = rows[head]
    src, addr = cols.index("Source"), cols.index("Address")
    samp = next(i for i, c in enumerate(cols) if c.startswith("Warp Stall Sampling (All"))
    hot, by_op, total = [], Counter(), 0
    for r in rows[head + 1:]:
        if len(r) <= samp or not r[samp].strip():
            continue
        n = int(float(r[samp].replace(",", "")))
        total += n
        op = r[src].split()[0] if r[src].split() else "?"
        if op.startswith("@"):  # predicated: the opcode follows the guard
            op = r[src].split()[1]
        by_op[op.split(".")[0]] += n
        hot.append((n, r[addr], r[src].strip()))
    print(f"stall samples: {total}")
    for n, a, s in sorted(hot, reverse=True)[:top]:
        print(f"{100.0 * n / total:5.1f}%  {a:>6}  {s[:110]}")
    print("by opcode:")
    for op, n in by_op.most_common(15):
        print(f"{100.0 * n / total:5.1f}%  {op}")


if __name__ == "__main__":
    main()
