#!/usr/bin/env python3
"""Export a plain twin of an RTC model's network, for `flow-policy bench` (issue 11: the prefix
inputs' cost). The twin has the RTC checkpoint's config with ``rtc_max_delay: 0`` (same horizon,
basis, width, depth), its normalization statistics and seeded random weights (latency does not
depend on them); it is exported with the package's exporter (parity-checked as always).

    .venv/bin/python scripts/rtc_plain_twin.py --checkpoint models/iiwa_reach_around_rtc.pt --out out/rtc_twin.onnx
    flow-policy bench --model out/rtc_twin.onnx --calls 3000
    flow-policy bench --model models/iiwa_reach_around_rtc.onnx --calls 3000
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from flow_policy_ros.export.onnx_export import export_checkpoint  # noqa: E402
from flow_policy_ros.policy.checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from flow_policy_ros.policy.model import VelocityNet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="RTC checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="twin .onnx to write (its .pt goes beside it)")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.config.policy.rtc_max_delay == 0:
        parser.error(f"--checkpoint {args.checkpoint}: not a real-time chunking model (rtc_max_delay 0)")
    config = replace(ckpt.config, policy=replace(ckpt.config.policy, rtc_max_delay=0))
    torch.manual_seed(0)
    net = VelocityNet(config.policy)
    with torch.no_grad():
        net.output_proj.weight.normal_(0.0, 0.01)  # non-zero output so the graph is not folded away
    state = {k: v.clone() for k, v in net.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    twin_pt = args.out.with_suffix(".pt")
    save_checkpoint(twin_pt, Checkpoint(config=config, stats=ckpt.stats, model_state=state, ema_state=state,
                                        data_summary=ckpt.data_summary))
    export_checkpoint(twin_pt, args.out)
    print(f"plain twin of {args.checkpoint} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
