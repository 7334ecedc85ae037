#!/usr/bin/env python3
"""Turns hyperfine's JSON exports of bench/map-vs-jq into a table, a merged JSON file and
(optionally) the "cosell map vs jq vs jaq" section of BENCHMARKS.md.

    python3 bench/report_map.py --count N --out bench/results-map.json \
        [--benchmarks BENCHMARKS.md --machine machine.txt --commands commands.txt \
         --notes-json notes.json] hyperfine-1.json [hyperfine-2.json ...]

Only the section under SECTION is replaced; every other part of BENCHMARKS.md is kept.
"""

import argparse
import json
import os
import statistics
import sys

SECTION = "## cosell map vs jq vs jaq (100k referrals)"
CRITERION = "## Criterion: per-referral mapping cost"
CRITERION_PLACEHOLDER = "(filled by cargo bench --bench mapping; see below)"


def fmt_s(x):
    return "%.2f s" % x


def table(results, count):
    ref = next(r for r in results if r.get("command_name", r["command"]) == "cosell")
    ref_median = ref["median"]
    rows = [
        "| tool | median wall time | min – max | runs | CPU time (mean user+sys) | referrals/s (median) | vs cosell (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        med = r["median"]
        ratio = med / ref_median
        rows.append("| %s | %s | %s – %s | %d | %s | %s | %s |" % (
            r.get("command_name", r["command"]), fmt_s(med), fmt_s(min(r["times"])), fmt_s(max(r["times"])),
            len(r["times"]), fmt_s(r["user"] + r["system"]), "{:,.0f}".format(count / med),
            "1.00×" if r is ref else "%.2f×" % ratio))
    return "\n".join(rows)


def section(results, count, machine, commands, notes):
    return "\n".join([
        SECTION,
        "",
        "End-to-end: read %s Partner Center referrals (JSON Lines, %s), map each through"
        % ("{:,}".format(count), notes.get("size", "?")),
        "`referral_to_opportunity` of `mappings/dynamics365.yaml`, write the opportunities (one JSON",
        "line each) to /dev/null. cosell against the same transformation hand-written in jq",
        "(`bench/opportunity.jq`), run by jq and by jaq. Reproduce with `bench/map-vs-jq`",
        "(it builds, generates the data, checks that all tools print identical records, then times them).",
        "",
        "**The machine is shared and noisy** (2 cores, other builds running at the same time), so",
        "treat the numbers as rough: compare the ratios, not the absolute times, and expect",
        "run-to-run variation of 10–30 %.",
        "",
        table(results, count),
        "",
        "- *referrals/s* counts input referrals; %s of them are `Shared` and become an"
        % notes.get("shared", "?"),
        "  opportunity, the rest are skipped by the flow's `when` (no output line; cosell notes each",
        "  skip on stderr, which hyperfine discards like stdout).",
        "- *vs cosell*: median wall time divided by cosell's (default threads = `nproc`); above 1× is slower.",
        "- *CPU time* is hyperfine's mean user + system time; with the machine's other load (see the",
        "  load average below) a second worker thread does not always get a free core, so compare",
        "  `cosell` and `cosell --threads 1` on both wall and CPU time.",
        "- Runs: %s" % notes.get("runs", "?"),
        "- Equivalence: before timing, `bench/check_equivalence.py` runs cosell, jq and jaq on the",
        "  first %s referrals and requires identical JSON objects line by line (key order ignored):"
        % notes.get("checked", "2000"),
        "  %s (`CHECK=100000 bench/map-vs-jq` compares all of them, ~1 min more.)" % notes.get("equivalence", "?"),
        "- `bench/opportunity.jq` is exact only for the generated data: dates always have a `Z`",
        "  offset (cosell's `date` converts any offset to the UTC date; jq takes the first 10",
        "  characters), countries are always alpha-2 codes and currencies ISO codes (cosell also",
        "  accepts country names, alpha-3 codes and surrounding whitespace; jq just upper-cases),",
        "  and `dealValue` is always a JSON number. A jq program with cosell's full `date`,",
        "  `country_code` and `number` would be longer and slower.",
        "",
        "Commands (run by `hyperfine -N --warmup 1`, output to /dev/null):",
        "",
        "```sh",
        commands.strip(),
        "```",
        "",
        "Machine and tools:",
        "",
        "```",
        machine.strip(),
        "```",
        "",
    ])


def update_benchmarks(path, text):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    else:
        doc = "\n".join([
            "# Benchmarks",
            "",
            "Performance figures for cosell. The machine they were measured on is described in each",
            "section; it is shared and noisy, so compare ratios rather than absolute times.",
            "",
            SECTION,
            "",
            "(filled by bench/map-vs-jq)",
            "",
            CRITERION,
            "",
            CRITERION_PLACEHOLDER,
            "",
        ])
    start = doc.find(SECTION)
    if start < 0:
        # Put it before the criterion section if there is one, else at the end.
        at = doc.find(CRITERION)
        doc = (doc[:at] + text + "\n" + doc[at:]) if at >= 0 else (doc.rstrip("\n") + "\n\n" + text)
    else:
        end = doc.find("\n## ", start + len(SECTION))
        end = len(doc) if end < 0 else end + 1
        doc = doc[:start] + text + ("\n" if end < len(doc) else "") + doc[end:]
    if CRITERION not in doc:
        doc = doc.rstrip("\n") + "\n\n" + CRITERION + "\n\n" + CRITERION_PLACEHOLDER + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--benchmarks")
    ap.add_argument("--machine")
    ap.add_argument("--commands")
    ap.add_argument("--notes-json")
    args = ap.parse_args()

    results = []
    for p in args.exports:
        with open(p, encoding="utf-8") as f:
            results.extend(json.load(f)["results"])
    for r in results:
        r["median"] = statistics.median(r["times"])
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"count": args.count, "results": results}, f, indent=2)
        f.write("\n")
    print(table(results, args.count))
    if args.benchmarks:
        read = lambda p: open(p, encoding="utf-8").read() if p else ""
        notes = json.loads(read(args.notes_json) or "{}")
        update_benchmarks(args.benchmarks, section(results, args.count, read(args.machine), read(args.commands), notes))
        print("updated %s" % args.benchmarks, file=sys.stderr)


if __name__ == "__main__":
    main()
