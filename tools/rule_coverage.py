"""Rule coverage: run the generated rule exactness cases at scale and report what they reached.

    python tools/rule_coverage.py --examples 40          # 40 examples per table entry
    python tools/rule_coverage.py --cases conv,reduce     # a subset of the cases

For every case of ``tests/rule_cases.py`` and every table entry (op) it covers,
hypothesis draws ``--examples`` argument combinations and plans; each example is
checked as in the default suite (rewrite == mask == zero-produce, shapes; see
``rule_cases.check``), but failures are counted instead of raised. Writes
``<out>.json`` and ``<out>.md`` (default ``tools/results/rule_coverage``) together,
atomically: for each rule, its table entries, the examples that passed, failed or
were refused with a named error, and for each argument the values the generator
reached, plus every distinct argument combination with its counts.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

DEFAULT_OUT = str(ROOT / "tools" / "results" / "rule_coverage")
MAX_FAILURES_KEPT = 20
"""Failing examples kept per case in the report (the counts are complete)."""


def run_op(case: Any, op: Any, examples: int, seed: int) -> list[dict[str, Any]]:
    """Check ``examples`` drawn examples of ``op`` in ``case``; one record per example."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from rule_cases import check

    records: list[dict[str, Any]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(s=case.specs([op]), data=st.data())
    def one(s, data) -> None:
        rec: dict[str, Any] = {"spec": repr(s), "args": s.kwargs}
        try:
            outcome = check(s, data)
        except Exception as exc:  # an example that fails is counted, not raised
            first = " ".join(str(exc).strip().splitlines()[:3])[:800]
            rec.update(result="fail", error=f"{type(exc).__name__}: {first}")
        else:
            rec.update(result="refused" if outcome.refused else "pass", exact_groups=outcome.exact_groups,
                       norm_groups=outcome.norm_groups, removed=outcome.removed)
            if outcome.refused:
                rec["error"] = outcome.refused[:300]
        records.append(rec)

    try:
        one()
    except Exception as exc:  # e.g. Unsatisfiable: the case's draws never fit this op
        records.append({"spec": f"{case.name} / {op!r}", "args": {}, "result": "fail",
                        "error": f"generator: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return records


def plain(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def summarize_case(case: Any, by_op: dict[str, list[dict]]) -> dict[str, Any]:
    """Counts per op, per argument value and per distinct argument combination."""
    ops = {label: dict(Counter(r["result"] for r in recs)) for label, recs in by_op.items()}
    args: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    combos: dict[str, Counter] = defaultdict(Counter)
    failures = []
    for label, recs in by_op.items():
        for r in recs:
            for name, value in r["args"].items():
                args[name][plain(value)][r["result"]] += 1
            key = json.dumps({"op": label, **{k: plain(v) for k, v in r["args"].items()}}, sort_keys=True)
            combos[key][r["result"]] += 1
            if r["result"] == "fail" and len(failures) < MAX_FAILURES_KEPT:
                failures.append({"spec": r["spec"], "error": r["error"]})
    return {
        "bias": case.bias, "xfail": case.xfail, "why": case.why, "ops": ops,
        "args": {n: {v: dict(c) for v, c in vals.items()} for n, vals in args.items()},
        "combinations": [{"args": json.loads(k), **dict(c)} for k, c in sorted(combos.items())],
        "failures": failures,
    }


def totals(counts: list[dict[str, int]]) -> dict[str, int]:
    out: Counter = Counter()
    for c in counts:
        out.update(c)
    return {k: out.get(k, 0) for k in ("pass", "fail", "refused")}


def build_report(results: dict[str, dict], command: str, args: argparse.Namespace, elapsed: float) -> dict:
    from rule_cases import CASES, UNREACHABLE, covered_labels, table_entries

    rules: dict[str, dict[str, Any]] = defaultdict(lambda: {"entries": [], "cases": {}})
    reached = {label for res in results.values() for label, c in res["ops"].items() if sum(c.values())}
    for e in table_entries():
        entry = {"op": e.label, "kind": e.kind, "reached": e.label in reached,
                 "cases": covered_labels().get(e.label, [])}
        if e.label in UNREACHABLE:
            entry["unreachable"] = UNREACHABLE[e.label]
        rules[e.rule]["entries"].append(entry)
    for name, res in results.items():
        rules[CASES[name].rule]["cases"][name] = res
    for r in rules.values():
        r["totals"] = totals([c for res in r["cases"].values() for c in res["ops"].values()])
        r["combinations"] = sum(len(res["combinations"]) for res in r["cases"].values())
    every = [c for res in results.values() for c in res["ops"].values()]
    exact_every = [c for name, res in results.items() if not (CASES[name].bias or CASES[name].xfail)
                   for c in res["ops"].values()]
    summary = {
        "command": command, "examples_per_op": args.examples, "seed": args.seed, "seconds": round(elapsed, 1),
        "entries": len(table_entries()), "entries_reached": len(reached), "cases": len(results),
        "totals": totals(every), "totals_strict_cases": totals(exact_every),
        "torch": __import__("torch").__version__,
    }
    return {"summary": summary, "rules": dict(sorted(rules.items()))}


def _values_line(name: str, values: dict[str, dict[str, int]]) -> str:
    shown = sorted(values.items(), key=lambda kv: -sum(kv[1].values()))
    parts = []
    for v, c in shown[:12]:
        fails = c.get("fail", 0)
        parts.append(f"`{v}` {sum(c.values())}" + (f" ({fails} failed)" if fails else ""))
    more = f" (+{len(shown) - 12} more)" if len(shown) > 12 else ""
    return f"  - {name}: " + ", ".join(parts) + more


def markdown(report: dict) -> str:
    s = report["summary"]
    t, te = s["totals"], s["totals_strict_cases"]
    lines = [
        "# Rule coverage: generated exactness examples per rule", "",
        f"Command: `{s['command']}` ({s['seconds']:.0f} s, torch {s['torch']}, seed {s['seed']}).", "",
        f"{s['entries_reached']}/{s['entries']} table entries reached by {s['cases']} cases; "
        f"{t['pass']} examples passed, {t['fail']} failed, {t['refused']} refused with a named error "
        f"(strict cases only: {te['pass']} passed, {te['fail']} failed).", "",
        "Each example checks rewrite == mask == zero-produce (groups without norm members), the rewrite's "
        "shapes, and the case's claim (the producer's group is exactly prunable, or a barrier / norm member). "
        "*Bias* cases put an op with f(0) != 0 between producer and consumer (expected to fail until bias "
        "compensation covers them); *reported* cases hit a bug reported outside the rule files.", "",
        "| rule | entries (reached) | examples | passed | failed | refused | argument combinations |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, r in report["rules"].items():
        n_reached = sum(e["reached"] for e in r["entries"])
        tt = r["totals"]
        lines.append(f"| {rule} | {len(r['entries'])} ({n_reached}) | {sum(tt.values())} | {tt['pass']} | "
                     f"{tt['fail']} | {tt['refused']} | {r['combinations']} |")
    for rule, r in report["rules"].items():
        lines += ["", f"## {rule}", ""]
        unreached = [e["op"] + (f" ({e['unreachable']})" if "unreachable" in e else "")
                     for e in r["entries"] if not e["reached"]]
        if unreached:
            lines.append("Not reached: " + ", ".join(unreached))
        for name, res in r["cases"].items():
            tt = totals(list(res["ops"].values()))
            tag = f" (bias case: {res['why'] or 'f(0) != 0'})" if res["bias"] else \
                f" ({res['xfail']})" if res["xfail"] else ""
            lines += ["", f"### case `{name}`{tag}", "",
                      f"{sum(tt.values())} examples: {tt['pass']} passed, {tt['fail']} failed, "
                      f"{tt['refused']} refused; {len(res['combinations'])} distinct argument combinations.", "",
                      "- ops: " + ", ".join(f"`{op}` {sum(c.values())}" + (f" ({c['fail']} failed)" if c.get("fail")
                                                                           else "") for op, c in res["ops"].items())]
            lines += [_values_line(n, v) for n, v in res["args"].items()]
            for f in res["failures"][:5]:
                lines.append(f"- failed: `{f['spec']}`: {f['error']}")
    lines.append("")
    return "\n".join(lines)


def write_outputs(out: str, report: dict) -> None:
    """Both files published together (fxprune's atomic writer)."""
    from fxprune.atomic import atomic_write_all

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    def write(temps: list[str]) -> None:
        Path(temps[0]).write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
        Path(temps[1]).write_text(markdown(report))

    atomic_write_all([out + ".json", out + ".md"], write)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=20, help="examples per table entry of each case (default 20)")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output prefix: writes <out>.json and <out>.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from rule_cases import CASES

    names = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"error: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    if args.examples < 1:
        print("error: --examples must be at least 1", file=sys.stderr)
        return 2
    command = "python " + " ".join(shlex.quote(a) for a in ["tools/rule_coverage.py", *argv])
    start = time.perf_counter()
    results = run_cases(names, args)
    report = build_report(results, command, args, time.perf_counter() - start)
    write_outputs(args.out, report)
    print(f"wrote {args.out}.json and {args.out}.md", flush=True)
    return 0


def run_cases(names: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Every op of every named case, ``args.examples`` examples each (torch threads and warnings restored)."""
    import torch

    from rule_cases import CASES, op_label

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    results = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, name in enumerate(names):
                case, t0 = CASES[name], time.perf_counter()
                by_op = {op_label(o): run_op(case, o, args.examples, args.seed) for o in case.ops}
                results[name] = summarize_case(case, by_op)
                tt = totals(list(results[name]["ops"].values()))
                print(f"[{i + 1}/{len(names)}] {name}: {tt['pass']} passed, {tt['fail']} failed, "
                      f"{tt['refused']} refused ({time.perf_counter() - t0:.1f}s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    return results


if __name__ == "__main__":
    sys.exit(main())
