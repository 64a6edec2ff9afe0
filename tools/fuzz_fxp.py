#!/usr/bin/env python
"""Bit-flip a saved ``.fxp`` and check that ``fxprune.load`` never returns a silently wrong model.

    python tools/fuzz_fxp.py                      # head 2400 bytes, tail 2000 bytes, 200 in between
    python tools/fuzz_fxp.py --head 200 --tail 200 --middle 20    # a quick run

Saves a pruned ``lenet5`` (l1, sparsity 0.5) to a temporary folder, then flips one bit
(``0x04``) at each chosen byte position and loads the damaged copy. Every outcome is one of:
a named ``FxpruneError`` (counted by type), or a model identical to the original (a flip in a
byte nothing reads). A model that loads but differs, or a raw exception, is a failure: they are
listed and the exit code is 1. Prints the counts per outcome.
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

import fxprune
from fxprune import models


def positions(size: int, head: int, tail: int, middle: int, seed: int) -> list[int]:
    """Every byte of the first ``head`` and last ``tail`` bytes, plus ``middle`` sampled in between."""
    first, last = list(range(min(head, size))), list(range(max(size - tail, head), size))
    inner = range(min(head, size), max(size - tail, head))
    return first + sorted(random.Random(seed).sample(inner, min(middle, len(inner)))) + last


def outcome(path: Path, x: torch.Tensor, want: torch.Tensor, state: dict) -> str:
    """What loading the damaged file gives: an error type name, 'same', or a failure label."""
    try:
        gm = fxprune.load(path)
        with torch.no_grad():
            same = torch.equal(gm(x), want) and all(torch.equal(a, b) for a, b in
                                                    zip(gm.state_dict().values(), state.values()))
        return "same" if same else "FAIL different model"
    except fxprune.FxpruneError as exc:
        return type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - exactly what this tool looks for
        return f"FAIL raw {type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", type=int, default=2400)
    p.add_argument("--tail", type=int, default=2000)
    p.add_argument("--middle", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(args.seed)
    x = torch.randn(3, 1, 28, 28)
    result = fxprune.compile(models.get("lenet5", in_channels=1).eval(), x, "l1", 0.5, validate=False)
    with tempfile.TemporaryDirectory() as folder:
        good, bad = Path(folder) / "good.fxp", Path(folder) / "bad.fxp"
        fxprune.save(result, good)
        raw = good.read_bytes()
        ref = fxprune.load(good)
        with torch.no_grad():
            want = ref(x)
        counts: collections.Counter[str] = collections.Counter()
        failures = []
        for pos in tqdm(positions(len(raw), args.head, args.tail, args.middle, args.seed), desc="bit flips"):
            damaged = bytearray(raw)
            damaged[pos] ^= 0x04
            bad.write_bytes(bytes(damaged))
            kind = outcome(bad, x, want, ref.state_dict())
            counts[kind] += 1
            if kind.startswith("FAIL"):
                failures.append((pos, kind))
    print(f"{sum(counts.values())} single-bit flips of a {len(raw)}-byte lenet5 .fxp: "
          + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for pos, kind in failures[:20]:
        print(f"  byte {pos}: {kind}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
