"""Does the measured INT8 sensitivity rediscover the float nodes fgcli's rules keep by hand?

    python benchmarks/rediscover_float_nodes.py RUN/best.pt --data DATASET [--out DIR] [--val-size 256]

Runs ``fgcli sensitivity`` (ONNX Runtime backend) on the checkpoint with both hand-written rules switched off
(the softmax-weighted nodes and the model's ``float_nodes`` regex), so every node is measured, and prints where
the nodes the rules keep float rank among them. Writes ``<out>/rediscover.json``, sensitivity.json / .png. A GCAM-CSA run answers whether its
softmax-weighted channel sum (``/attention/Mul``) comes out on top; a TASN run, whether its sampler ops do.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import fgcli.calibration as calibration
from fgcli.export.int8 import fp32_onnx_of, sensitivity_of
from fgcli.runtime.onnx_meta import load_onnx
from fgcli.utils import write_json_atomic


def rule_nodes(onnx_path: Path) -> list[str]:
    """The nodes the hand-written rules keep float in this FP32 model."""
    model = load_onnx(onnx_path)
    return calibration.float_nodes(model, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/rediscover"))
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--val-size", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore", calibration.dataset.CalibrationWarning)

    onnx_path = fp32_onnx_of(args.checkpoint, args.out)
    kept_by_rules = rule_nodes(onnx_path)
    import fgcli.calibration.ort_int8 as ort_int8

    original = calibration.float_nodes
    calibration.float_nodes = ort_int8.float_nodes = lambda source, graph, extra=(): list(extra)  # no rule
    try:
        without_rules, _ = sensitivity_of(onnx_path, args.data, args.out, calib_size=args.calib_size,
                                          val_size=args.val_size,
                                          progress=lambda node, total: print(".", end="", flush=True))
    finally:
        calibration.float_nodes = ort_int8.float_nodes = original
    ranks = {node.name: rank for rank, node in enumerate(without_rules.nodes, 1)}
    print()
    print(f"full INT8 agreement without the rules {without_rules.full_int8.agreement:.1%} "
          f"({len(without_rules.nodes)} nodes measured)")
    rows = []
    for name in kept_by_rules:
        rank = ranks.get(name)  # None: the node is not quantized even without the rule
        node = without_rules.nodes[rank - 1] if rank else None
        rows.append({"node": name, "rank": rank, "score": node.score if node else None,
                     "recovered_agreement": node.recovered_agreement if node else None})
        print(f"  kept float by a rule: {name}: rank {rank} of {len(without_rules.nodes)}"
              + (f", recovers {node.recovered_agreement:+.1%} agreement, KL score {node.score:.3g}" if node else ""))
    print("top 5 measured:", ", ".join(f"{n.name} ({n.score:.3g})" for n in without_rules.nodes[:5]))
    write_json_atomic(args.out / "rediscover.json", {
        "checkpoint": str(args.checkpoint), "rule_nodes": rows,
        "full_int8_agreement_without_rules": without_rules.full_int8.agreement,
        "top": [{"node": n.name, "score": n.score, "recovered_agreement": n.recovered_agreement}
                for n in without_rules.nodes[:10]]})
    print(f"wrote {args.out / 'rediscover.json'}")


if __name__ == "__main__":
    main()
