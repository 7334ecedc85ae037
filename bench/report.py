#!/usr/bin/env python3
"""Merges the figures of bench/run into bench/results.json and one table (stdout), each
figure next to its budget from design.md §8; optionally writes the table into the
"Latest bench/run" section of BENCHMARKS.md.

    python3 bench/report.py --map bench/results-map.json --criterion target/criterion \
        --sync bench/results-sync.json --machine machine.txt --out bench/results.json \
        [--benchmarks BENCHMARKS.md]
"""

import argparse
import glob
import json
import os
import sys

SECTION = "## Latest `bench/run`"
MAP_FLOW = "map referral_to_opportunity (dynamics365)"


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def criterion(root):
    """Criterion medians in µs, keyed by benchmark title."""
    out = {}
    for estimates in glob.glob(os.path.join(root, "**", "new", "estimates.json"), recursive=True):
        bench = os.path.join(os.path.dirname(estimates), "benchmark.json")
        if not os.path.exists(bench):
            continue
        title = load(bench).get("title") or load(bench).get("full_id")
        e = load(estimates)["median"]
        ci = e["confidence_interval"]
        out[title] = {
            "median_us": e["point_estimate"] / 1000.0,
            "low_us": ci["lower_bound"] / 1000.0,
            "high_us": ci["upper_bound"] / 1000.0,
        }
    return out


def mark(ok):
    return "✔" if ok else "✘"


def rows(results):
    """(area, figure, value, budget, verdict) rows."""
    out = []
    m = results.get("map")
    if m:
        by = {r.get("command_name", r["command"]): r for r in m["results"]}
        n = m["count"]
        cosell = by["cosell"]["median"]
        for name in ["cosell", "cosell --threads 1", "jq", "jaq"]:
            if name not in by:
                continue
            med = by[name]["median"]
            value = "%.2f s, %s referrals/s" % (med, "{:,.0f}".format(n / med))
            if name in ("jq", "jaq"):
                value += ", %.2f× cosell's time" % (med / cosell)
                out.append(("mapping", "`%s` over %dk referrals (median of %d)" % (name, n // 1000, len(by[name]["times"])),
                            value, "cosell faster", mark(med > cosell)))
            else:
                out.append(("mapping", "`%s map` over %dk referrals (median of %d)" % (name, n // 1000, len(by[name]["times"])),
                            value, "", ""))
    c = results.get("criterion", {})
    for title, e in sorted(c.items()):
        budget = "≤ 2 µs" if title == MAP_FLOW else ""
        verdict = mark(e["median_us"] <= 2.0) if title == MAP_FLOW else ""
        out.append(("mapping", "criterion: %s" % title,
                    "%.2f µs [%.2f – %.2f]" % (e["median_us"], e["low_us"], e["high_us"]), budget, verdict))
    s = results.get("sync", {})
    for run in s.get("latency", []):
        zero = run["sandbox_latency_ms"] == 0
        out.append(("latency", "referral shared → CRM write, sandbox %d ms/call, %d referrals at %g/s" % (
            run["sandbox_latency_ms"], run["referrals"], run["rate_per_s"]),
            "p50 %g ms, p95 %g ms, p99 %g ms (max %g)" % (run["p50_ms"], run["p95_ms"], run["p99_ms"], run["max_ms"]),
            "p99 ≤ 20 ms" if zero else "seeds' connector: ~10 min",
            mark(run["p99_ms"] <= 20) if zero else mark(run["p99_ms"] < 600_000)))
    b = s.get("backfill")
    if b:
        out.append(("backfill", "%d referrals, sandbox %d ms/call, concurrency %d" % (
            b["referrals"], b["sandbox_latency_ms"], b["concurrency"]),
            "%.1f s, %.1f referrals/s; bound %.1f/s (%.2f calls/referral): %.0f %% of it" % (
                b["seconds"], b["referrals_per_s"], b["bound_per_s"], b["calls_per_referral"],
                100 * b["fraction_of_bound"]),
            "≥ 90 % of bound", mark(b["fraction_of_bound"] >= 0.9)))
        out.append(("resources", "engine peak RSS during the backfill", "%.1f MiB" % b["engine_peak_rss_mib"],
                    "≤ 64 MB", mark(b["engine_peak_rss_mib"] * 1.048576 <= 64)))
        out.append(("resources", "engine CPU during the backfill", "%.1f s (%.2f ms/referral)" % (
            b["engine_cpu_s"], b["engine_cpu_ms_per_referral"]), "", ""))
    names = {
        "new_referral_new_customer": ("new incoming referral, new customer", lambda r: r["calls"] <= 5, "≤ 5 calls"),
        "new_referral_known_customer": ("new incoming referral, known customer", lambda r: r["calls"] <= 5, "≤ 5 calls"),
        "unchanged_redelivery": ("unchanged re-delivery", lambda r: r["reads"] <= 1 and r["writes"] == 0, "≤ 1 read, 0 writes"),
        "echo_of_our_pc_write": ("echo of our own PC write", lambda r: r["writes"] == 0, "0 writes"),
        "quiet_poll_round": ("reconcile + CRM poll, nothing changed", lambda r: r["writes"] == 0, "0 writes"),
        "crm_edit_to_pc_patch": ("CRM edit → PC PATCH (the poll round included)", lambda r: r["writes"] == 1, "1 write"),
    }
    for crm, scenarios in sorted(s.get("economy", {}).items()):
        for r in scenarios:
            name, ok, budget = names.get(r["scenario"], (r["scenario"], lambda r: True, ""))
            out.append(("API calls", "%s: %s" % (crm, name), "%d (%d reads, %d writes)" % (
                r["calls"], r["reads"], r["writes"]), budget, mark(ok(r)) if budget else ""))
    res = s.get("resources")
    if res:
        out.append(("resources", "binary size (release)", "%.1f MiB" % res["binary_mib"], "", ""))
        out.append(("resources", "`cosell validate` on the shipped mappings, start to exit",
                    "first run %.1f ms, median of %d %.1f ms" % (
                        res["validate_first_ms"], res["validate_runs"], res["validate_median_ms"]), "", ""))
    return out


def markdown(table_rows):
    lines = ["| area | figure | measured | budget (design §8) | |", "|---|---|---|---|:-:|"]
    for area, figure, value, budget, verdict in table_rows:
        lines.append("| %s | %s | %s | %s | %s |" % (area, figure, value, budget, verdict))
    return "\n".join(lines)


def update_benchmarks(path, table, machine):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    body = "\n".join([
        SECTION,
        "",
        "Written by `UPDATE_BENCHMARKS=1 bench/run` (all figures of one run, side by side on one",
        "machine; the figures' detail is in `bench/results.json`). The sections below explain",
        "each figure and record earlier runs.",
        "",
        table,
        "",
        "Machine and tools:",
        "",
        "```",
        machine.rstrip(),
        "```",
        "",
    ])
    start = text.find(SECTION)
    if start < 0:
        # First time: after the introduction, before the first section.
        first = text.find("\n## ")
        start = first + 1 if first >= 0 else len(text)
        text = text[:start] + body + "\n" + text[start:]
    else:
        end = text.find("\n## ", start + len(SECTION))
        end = end + 1 if end >= 0 else len(text)
        text = text[:start] + body + "\n" + text[end:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--map")
    p.add_argument("--criterion")
    p.add_argument("--sync")
    p.add_argument("--machine")
    p.add_argument("--out", required=True)
    p.add_argument("--benchmarks")
    a = p.parse_args()
    results = {}
    if a.map and os.path.exists(a.map):
        results["map"] = load(a.map)
    if a.criterion:
        results["criterion"] = criterion(a.criterion)
    if a.sync and os.path.exists(a.sync):
        results["sync"] = load(a.sync)
    machine = open(a.machine, encoding="utf-8").read() if a.machine else ""
    results["machine"] = machine
    table_rows = rows(results)
    results["table"] = [dict(zip(["area", "figure", "measured", "budget", "met"], r)) for r in table_rows]
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    table = markdown(table_rows)
    print(table)
    print()
    print(machine)
    if a.benchmarks:
        update_benchmarks(a.benchmarks, table, machine)
        print("BENCHMARKS.md: section %r updated" % SECTION, file=sys.stderr)
    missed = [r for r in table_rows if r[4] == "✘"]
    if missed:
        print("%d budget(s) missed: see BENCHMARKS.md for the causes" % len(missed), file=sys.stderr)


if __name__ == "__main__":
    main()
