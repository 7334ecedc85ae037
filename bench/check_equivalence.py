#!/usr/bin/env python3
"""Checks that bench/opportunity.jq computes what `cosell map` computes.

    python3 bench/check_equivalence.py INPUT.jsonl [--count 2000] [--cosell PATH] [--jq jq] [--jaq PATH]

Runs `cosell map --config mappings/dynamics365.yaml --flow referral_to_opportunity` and
`jq -c -f bench/opportunity.jq` (and jaq, with --jaq) on the first COUNT lines of INPUT, then
compares the outputs line by line as parsed JSON (key order ignored; numbers compared by value,
so `1.5` and `1.50` are equal, but a string is never equal to a number). Exits 1 at the first
difference, printing it; 0 when every line is identical. Skipped referrals print no line in
either tool, so the line counts must match too.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, "mappings", "dynamics365.yaml")
FLOW = "referral_to_opportunity"
PROGRAM = os.path.join(HERE, "opportunity.jq")


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode("utf-8", "replace")[-4000:])
        sys.exit("✘ %s exited with %d" % (cmd[0], p.returncode))
    return p.stdout.decode("utf-8").splitlines()


def first_diff(a, b, path="$"):
    """The first place where a and b differ, as (path, a, b), or None."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if (type(a) is type(b) and a == b) else (path, a, b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return None if a == b else (path, a, b)
    if type(a) is not type(b):
        return (path, a, b)
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return ("%s.%s" % (path, k), a.get(k, "<absent>"), b.get(k, "<absent>"))
            d = first_diff(a[k], b[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return (path + ".length", len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    return None if a == b else (path, a, b)


def short(v, limit=300):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= limit else s[:limit] + "… (%d chars)" % len(s)


def compare(name, ref_lines, other_lines, inputs):
    n = max(len(ref_lines), len(other_lines))
    for i in range(n):
        if i >= len(ref_lines) or i >= len(other_lines):
            print("✘ %s: cosell printed %d lines, %s %d" % (name, len(ref_lines), name, len(other_lines)))
            return False
        a, b = json.loads(ref_lines[i]), json.loads(other_lines[i])
        d = first_diff(a, b)
        if d:
            path, va, vb = d
            rid = a.get("cosell_referralid") if isinstance(a, dict) else None
            src = next((r for r in inputs if r.get("id") == rid), None)
            print("✘ %s: output line %d (referral %s) differs at %s" % (name, i + 1, rid, path))
            print("    cosell: %s" % short(va))
            print("    %-6s: %s" % (name, short(vb)))
            if src is not None:
                print("    input : %s" % short(src, 2000))
            return False
    print("✔ %s: %d output lines identical to cosell's" % (name, n))
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--cosell", default=os.path.join(ROOT, "target", "release", "cosell"))
    ap.add_argument("--jq", default="jq")
    ap.add_argument("--jaq", default=None, help="also check this jaq binary")
    args = ap.parse_args()

    with open(args.input, encoding="utf-8") as f:
        lines = []
        for line in f:
            lines.append(line)
            if len(lines) >= args.count:
                break
    inputs = [json.loads(l) for l in lines]
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".jsonl", delete=False) as tmp:
        tmp.writelines(lines)
    try:
        ref = run([args.cosell, "map", "--config", CONFIG, "--flow", FLOW, "--input", tmp.name])
        shared = sum(1 for r in inputs if r.get("type") == "Shared")
        print("  %d referrals in, %d Shared, cosell printed %d records" % (len(inputs), shared, len(ref)))
        ok = compare("jq", ref, run([args.jq, "-c", "-f", PROGRAM, tmp.name]), inputs)
        if args.jaq:
            ok = compare("jaq", ref, run([args.jaq, "-c", "-f", PROGRAM, tmp.name]), inputs) and ok
    finally:
        os.unlink(tmp.name)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
