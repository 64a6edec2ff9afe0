"""Check the torch.export front end on models torch.fx cannot trace (and two it can), one subprocess each.

For every model: capture (``capture="auto"``: fx first, then torch.export), analyse, prune every
group without normalisation members by half (random keep-sets, seed 0), and check the oracle of
the test suite: rewrite == mask == the original with the removed units' produce slices zeroed,
and the user's own model object rewritten the same way; then ``fxprune.compile(..., l1, 0.5)``
validated in onnxruntime. Writes ``<out>.json`` and ``<out>.md``.

    python tools/export_check.py                       # every model below
    python tools/export_check.py --models block,timm:mobilevit_xxs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> input size (H=W for images; (batch, tokens, width) for the block)
    "tv:resnet18": 64, "tv:mobilenet_v3_small": 64, "block": 0,
    "timm:mobilevit_xxs": 256, "timm:cpubone_nano": 224, "timm:efficientvit_m0": 224,
    "timm:tiny_vit_5m_224": 224, "timm:vit_tiny_r_s16_p8_224": 224, "timm:efficientvit_b0": 224,
    "timm:convit_tiny": 224, "timm:crossvit_tiny_240": 240, "timm:twins_svt_small": 224,
    "timm:nest_tiny": 224, "timm:mvitv2_tiny": 224,
    "hf:bert": 0, "hf:gpt2": 0, "hf:llama": 0,
}


def build(name: str, size: int) -> tuple[Any, Any]:
    """(model in eval mode with random BN statistics, example inputs)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import randomize_bn

    torch.manual_seed(0)
    kind, _, model_name = name.partition(":")
    if kind == "tv":
        import torchvision
        model = getattr(torchvision.models, model_name)()
    elif kind == "timm":
        import timm
        model = timm.create_model(model_name, pretrained=False)
    elif kind == "block":
        from test_export_capture import Block
        return Block(64, 4, 128).eval(), torch.randn(2, 10, 64)
    elif kind == "hf":
        return build_hf(model_name)
    else:
        raise ValueError(name)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return randomize_bn(model).eval(), torch.randn(1, 3, size, size)


def build_hf(kind: str) -> tuple[Any, Any]:
    """A tiny Hugging Face model from a config (offline, random weights), inputs by keyword."""
    import torch
    import transformers as tf

    common = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    if kind == "bert":
        model = tf.BertModel(tf.BertConfig(num_hidden_layers=2, max_position_embeddings=64, **common))
    elif kind == "gpt2":
        model = tf.GPT2Model(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=100))
    else:
        model = tf.LlamaModel(tf.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=64,
                                             **common))
    model.config.use_cache = False
    ids = torch.randint(0, 100, (1, 8))
    return model.eval(), {"input_ids": ids}


def check_one(name: str, size: int) -> dict[str, Any]:
    import torch
    import fxprune
    from conftest import exact_plan, max_diff
    from equivalence import zero_produce
    from fxprune.analysis import Analyzer
    from fxprune.state import state_of
    from fxprune.trace import trace

    torch.set_num_threads(int(os.environ.get("EXPORT_CHECK_THREADS", "1")))
    sys.path.insert(0, str(ROOT / "tests"))
    model, x = build(name, size)
    rec: dict[str, Any] = {"model": name, "params": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    capture = "export" if name.startswith("tv:") else "auto"  # torchvision traces with fx: force export
    rec["capture"] = capture
    gm = trace(model, x, capture=capture)
    rec["trace_s"] = round(time.perf_counter() - start, 2)
    notes = state_of(gm).notes
    rec["front_end"] = next((n for n in notes if n.startswith("front end:")), "?")
    graph = Analyzer(gm, False).run()
    rec["unsupported"] = sorted(set(graph.unsupported.values()))
    plan = exact_plan(graph, 0.5)
    rec["groups"], rec["exact_groups"] = len(graph.prunable_groups), len(plan)
    inputs = state_of(gm).example_inputs
    if plan:
        with torch.no_grad():
            pruned = fxprune.rewrite(graph.gm, graph, plan)
            got = _tensor(pruned(*inputs))
            references = (("mask", fxprune.mask(graph.gm, graph, plan)), ("zero_produce", zero_produce(graph, plan)),
                          ("user_model", fxprune.rewrite(model, graph, plan)))
            for what, module in references:
                diff, scale = max_diff(got, _tensor(module(*inputs)))
                rec[what] = {"diff": diff, "scale": scale, "ok": diff <= 1e-4 * scale}
    start = time.perf_counter()
    result = fxprune.compile(model, x, method="l1", sparsity=0.5, capture=capture)
    rec["compile_s"] = round(time.perf_counter() - start, 2)
    rec["macs_before"], rec["macs_after"] = result.report.macs_before, result.report.macs_after
    rec["params_after"] = result.report.params_after
    rec["validation"] = result.report.validation
    rec["ok"] = bool(plan) and all(rec[k]["ok"] for k in ("mask", "zero_produce", "user_model")) \
        and "onnx ok" in (result.report.validation or "")
    return rec


def _tensor(out: Any):
    """The first tensor of a model output (a tensor, a tuple or a dict)."""
    import torch
    from torch.utils import _pytree as pytree
    return next(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def run_isolated(name: str, size: int, timeout: int) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--size", str(size)], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "status": f"timeout after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        rec = json.loads(lines[-1])
        rec["status"] = "ok" if rec["ok"] else "check failed"
    else:
        tail = ([ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"])[0]
        export_part = tail.split("Then torch.export failed too: ")[-1]
        rec = {"model": name, "ok": False, "status": f"refused/failed: {export_part[:400]}"}
    rec["total_s"] = round(time.perf_counter() - start, 1)
    return rec


def _ops_left(unsupported: list[str]) -> list[str]:
    """``aten.index.Tensor x6``: the ATen ops left as barriers, by op, with their count of modules."""
    counts: dict[str, int] = {}
    for what in unsupported:
        if what.startswith("ATen op "):
            op = what.split()[2]
            counts[op] = counts.get(op, 0) + 1
    return [f"{op} x{n}" if n > 1 else op for op, n in sorted(counts.items())]


def render(records: list[dict[str, Any]], command: str) -> str:
    import platform

    import torch
    rows = ["# torch.export front end: oracle check", "", "Command:", "", "```", command, "```", "",
            f"torch {torch.__version__}, python {platform.python_version()}; one subprocess per model, 1 thread; "
            "exact groups (no normalisation members) pruned by half with random keep-sets (seed 0); "
            "diff = max abs difference of the first output, tolerance 1e-4 x max(1, scale); then "
            "`fxprune.compile(model, x, 'l1', 0.5)` validated in onnxruntime.", "",
            f"- models: {len(records)}, all checks ok: {sum(r.get('ok', False) for r in records)}", "",
            "| model | params | front end | groups (exact) | rewrite vs mask / zero-produce / user model | "
            "MACs before→after | onnx | ATen ops left as barriers | s trace / total | status |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "groups" not in r:
            rows.append(f"| {r['model']} | - | - | - | - | - | - | - | - / {r.get('total_s', '-')} | {r['status']} |")
            continue
        front = ("export" if "torch.export" in r["front_end"] else "fx") + f" ({r.get('capture', 'auto')})"
        diffs = " / ".join(f"{'ok' if r[k]['ok'] else 'FAIL'} {r[k]['diff']:.1e}" for k in
                           ("mask", "zero_produce", "user_model")) if "mask" in r else "no exact group"
        onnx = "ok" if "onnx ok" in (r.get("validation") or "") else (r.get("validation") or "-")[:60]
        macs = f"{r['macs_before'] / 1e6:.1f}M→{r['macs_after'] / 1e6:.1f}M"
        left = ", ".join(_ops_left(r["unsupported"])) or "none"
        rows.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {front} | {r['groups']} ({r['exact_groups']}) | "
                    f"{diffs} | {macs} | {onnx} | {left} | {r['trace_s']} / {r.get('total_s', '-')} | {r['status']} |")
    rows += ["", "Front end and why, per model:", ""]
    rows += [f"- {r['model']}: {r.get('front_end', r['status'])[:500]}" for r in records]
    return "\n".join(rows) + "\n"


def _write(path: str, text: str) -> None:
    from fxprune.atomic import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--timeout", type=int, default=420)
    parser.add_argument("--out", default=str(ROOT / "tools/results/export_check"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sys.path.insert(0, str(ROOT / "tests"))
        print(json.dumps(check_one(args.one, args.size)))
        return 0
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    from tqdm import tqdm
    records = [run_isolated(n, MODELS[n], args.timeout) for n in tqdm(names, desc="export check")]
    command = "python tools/export_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    _write(args.out + ".json", json.dumps(records, indent=1, default=str) + "\n")
    _write(args.out + ".md", render(records, command.strip()))
    print(render(records, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
