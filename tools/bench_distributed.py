#!/usr/bin/env python
"""Calibration time of ``submodular`` (AsymInChange) with 1 vs N processes on the same data.

    python tools/bench_distributed.py                     # 1 and 2 gloo processes, writes
                                                          # tools/results/distributed.{json,md}
    python tools/bench_distributed.py --procs 1,2 --images 256 --model resnet20
    torchrun --nproc-per-node 2 tools/bench_distributed.py --once   # one measurement under torchrun

The same calibration images (the bundled Fashion-MNIST test images, batches of
``--batch``) are split over the processes batch by batch (``fxprune.distributed.shard``);
every process runs ``fxprune.compile(model, x, "submodular", variant="asym", ...)`` on its
shard with ``torch.set_num_threads(1)`` (one core per process), and the Gram matrices are
summed over the processes. The plan is checked to be the same for every process count.
Reported: wall seconds of ``compile`` (slowest rank) and its phases. Processes start through
``torch.multiprocessing`` with a file store (gloo), or through ``torchrun`` with ``--once``.

Bad arguments end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

TOOLS = Path(__file__).resolve().parent
RESULTS = TOOLS / "results"


def _bench():
    """tools/bench.py, for its output helpers."""
    name = "fxprune_tools_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / "bench.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def calibration_batches(images: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` bundled images in batches of ``batch``."""
    from fxprune.training.data import bundled

    x, y = bundled().tensors
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, images, batch)]


def build_model(name: str) -> torch.nn.Module:
    from fxprune.demo import load_bundled_model
    from fxprune.models import get

    if name == "lenet5":
        return load_bundled_model()
    torch.manual_seed(0)
    return get(name, in_channels=1).eval()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement on this rank's shard (the whole data in a single process)."""
    import fxprune
    from fxprune import distributed

    torch.set_num_threads(1)
    model = build_model(args.model)
    data = calibration_batches(args.images, args.batch)
    shard = distributed.shard(data)
    start, cpu = time.perf_counter(), time.process_time()
    result = fxprune.compile(model, data[0][0][:2], "submodular", args.sparsity, variant="asym", data=shard,
                             validate=False, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    phases = {k: round(v, 3) for k, v in result.report.seconds.items() if k.startswith("submodular")}
    rank, size = distributed.world()
    return {"rank": rank, "procs": size, "images": sum(len(b[0]) for b in shard), "seconds": seconds, "cpu_seconds": cpu,
            "phases": phases, "plan": result.plan}


class CollectiveCounter:
    """Counts the collectives of this process and their payload bytes (this rank's tensor) by
    wrapping ``torch.distributed.all_reduce``, ``broadcast`` and ``all_gather``."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.calls, self.bytes = 0, 0
        for name, arg in (("all_reduce", 0), ("broadcast", 0), ("all_gather", 1)):
            setattr(dist, name, self._counted(getattr(dist, name), arg))

    def _counted(self, inner, arg: int):
        def counted(*a, **k):
            tensor = a[arg]
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return inner(*a, **k)
        return counted


def _worker(rank: int, size: int, store: str, out: str, args: argparse.Namespace) -> None:
    import torch.distributed as dist

    counter = CollectiveCounter()
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                                timeout=timedelta(minutes=5))
    rec = measure(args)
    rec["all_reduce_calls"], rec["all_reduce_bytes"] = counter.calls, counter.bytes
    torch.save(rec, Path(out) / f"rank{rank}.pt")
    if size > 1:
        dist.destroy_process_group()


def run_procs(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` on ``size`` spawned processes; the slowest rank's record plus every rank's time."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(size, str(Path(tmp) / "store"), tmp, args), nprocs=size,
                           start_method="spawn")
        recs = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(size)]
    if any(r["plan"] != recs[0]["plan"] for r in recs):
        raise SystemExit(f"error: the ranks of the {size}-process run disagree on the plan")
    slowest = max(recs, key=lambda r: r["phases"].get("submodular", 0.0))
    return {**slowest, "rank_seconds": [round(r["seconds"], 3) for r in recs],
            "rank_cpu_seconds": [round(r["cpu_seconds"], 3) for r in recs],
            "rank_images": [r["images"] for r in recs]}


def markdown(res: dict[str, Any]) -> str:
    base = res["runs"][0]["phases"].get("submodular", float("nan"))
    lines = ["# Distributed calibration: submodular (AsymInChange), 1 vs N processes", "",
             f"Command: `{res['command']}`", "",
             f"Model {res['model']}, {res['images']} bundled Fashion-MNIST images in batches of {res['batch']}, "
             f"sparsity {res['sparsity']}, gloo on CPU, one torch thread per process. `compile` is the wall "
             "time of `fxprune.compile` on the slowest rank (process start-up excluded; it includes tracing, "
             "analysis, the cross-rank checks and the rewrite), `submodular` its calibration pass (features, "
             "Grams, their all-reduce, greedy, reweighting); the speed-up is on `submodular`. Same plan for every "
             "process count: " + ("yes" if res["same_plan"] else "NO") + ".", "",
             "", "On a shared machine wall times depend on the other load; CPU seconds (`time.process_time` of "
             "each rank's `compile`, all its threads) do not, and on dedicated cores the wall time of N ranks "
             "is about the largest rank's CPU seconds: the CPU speed-up is that projection.", "",
             "| processes | images per rank | compile wall s (per rank) | compile CPU s (per rank) | CPU speed-up | "
             "submodular wall s (slowest rank) | wall speed-up | phases of the slowest (wall s) |",
             "|---|---|---|---|---|---|---|---|"]
    cpu_base = max(res["runs"][0]["rank_cpu_seconds"])
    for r in res["runs"]:
        phases = ", ".join(f"{k.removeprefix('submodular.')} {v:.2f}" for k, v in r["phases"].items())
        sub = r["phases"].get("submodular", float("nan"))
        cpu = r["rank_cpu_seconds"]
        lines.append(f"| {r['procs']} | {', '.join(map(str, r['rank_images']))} | "
                     f"{', '.join(f'{s:.2f}' for s in r['rank_seconds'])} | {', '.join(f'{s:.2f}' for s in cpu)} | "
                     f"{cpu_base / max(cpu):.2f}x | {sub:.2f} | {base / sub:.2f}x | {phases} |")
    lines += ["", f"Machine: {res['machine']}", ""]
    lines += projection_markdown(res)
    return "\n".join(lines)


#: the phases of ``submodular`` that shrink with the number of ranks (forwards and Gram accumulation)
PARALLEL_PHASES = ("submodular.forward", "submodular.gram", "submodular.forward+gram", "submodular.features+gram")
LINK = {"bandwidth_bytes_per_s": 1.25e9, "latency_s": 50e-6}  # a 10 Gb/s Ethernet link, 50 us per message


def projection(res: dict[str, Any], ranks: int) -> float:
    """Seconds of ``submodular`` on ``ranks`` processes on separate machines, from the 1-process
    phases (parallel part / ranks + the rest) and a ring all-reduce of the measured bytes on ``LINK``."""
    one = next(r for r in res["runs"] if r["procs"] == 1)
    multi = next((r for r in res["runs"] if r["procs"] > 1), None)
    parallel = sum(one["phases"].get(k, 0.0) for k in PARALLEL_PHASES)
    serial = one["phases"]["submodular"] - parallel
    if ranks == 1 or multi is None:
        return serial + parallel
    volume = 2 * (ranks - 1) / ranks * multi["all_reduce_bytes"] / LINK["bandwidth_bytes_per_s"]
    latency = 2 * (ranks - 1) * multi["all_reduce_calls"] * LINK["latency_s"]
    return serial + parallel / ranks + volume + latency


def projection_markdown(res: dict[str, Any]) -> list[str]:
    multi = next((r for r in res["runs"] if r["procs"] > 1), None)
    if multi is None:
        return []
    rows = [f"| {n} | {projection(res, n):.2f} | {projection(res, 1) / projection(res, n):.2f}x |"
            for n in (1, 2, 4, 8, 16, 64)]
    return ["## Projection past one machine", "",
            f"From the 1-process phases: the forwards and Gram accumulation ({', '.join(PARALLEL_PHASES)}) "
            "divide by the number of ranks, the rest of `submodular` (greedy, reweighting, checks) does not; "
            f"plus a ring all-reduce of the {multi['all_reduce_bytes'] / 1e6:.1f} MB in "
            f"{multi['all_reduce_calls']} collectives (all-reduce, broadcast, all-gather) that each rank sent "
            "in the measured run, over a "
            "10 Gb/s link with 50 us per message (one rank per machine). A model, not a measurement.", "",
            "| ranks | projected submodular s | speed-up |", "|---|---|---|", *rows, ""]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20", choices=("lenet5", "resnet20", "resnet56"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--once", action="store_true", help="one measurement in this process group (torchrun)")
    p.add_argument("--out", default=str(RESULTS / "distributed"), help="OUT.json and OUT.md")
    args = p.parse_args(argv)
    try:
        args.procs = [int(n) for n in args.procs.split(",") if n]
    except ValueError:
        p.error(f"--procs must be comma-separated integers, got {args.procs!r}")
    if not args.procs or min(args.procs) < 1:
        p.error("--procs needs counts >= 1")
    if not 1 <= args.images <= 500 or args.batch < 1:
        p.error("--images must be in 1..500 (the bundled images) and --batch >= 1")
    if args.images // args.batch < max(args.procs):
        p.error(f"{args.images // args.batch} batches cannot be split over {max(args.procs)} processes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from fxprune import distributed

    if args.once:
        distributed.init_from_env()
        rec = measure(args)
        times = distributed.all_reduce_sum(torch.tensor([rec["seconds"]], dtype=torch.float64))
        if distributed.is_main():
            print(json.dumps({**rec, "mean_seconds": float(times) / distributed.world()[1]}, default=str))
        distributed.close()
        return 0
    runs = [run_procs(n, args) for n in args.procs]
    bench = _bench()
    res = {"command": "python tools/bench_distributed.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": args.model, "images": args.images, "batch": args.batch, "sparsity": args.sparsity,
           "runs": [{k: v for k, v in r.items() if k != "plan"} for r in runs],
           "same_plan": all(r["plan"] == runs[0]["plan"] for r in runs),
           "machine": bench.machine_info(1, 1), "revision": bench._git_revision()}
    bench.atomic_write_text(args.out + ".json", json.dumps(res, indent=2, default=bench._json_default))
    bench.atomic_write_text(args.out + ".md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
