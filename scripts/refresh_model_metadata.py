#!/usr/bin/env python3
"""Rewrite an exported model's metadata with the current exporter's, leaving its graph untouched.

    .venv/bin/python scripts/refresh_model_metadata.py models/iiwa_reach.onnx models/iiwa_reach.pt

For models exported before the metadata carried the training observation range (the
out-of-distribution guard's input) and before training-data paths were made portable. A fresh
``flow-policy export`` of the same checkpoint is the better fix when it reproduces the graph
byte for byte; when the sampler code changed since (different constant folding, time features
recomputed), it does not, and the shipped network would change. This script keeps the network:

1. the checkpoint's sha256 must equal the model's ``checkpoint_sha256`` (same weights);
2. the new metadata is ``export.onnx_export.build_metadata`` of that checkpoint with the model's
   own name, step count and solver; apart from ``observation_range``, ``training_data`` and
   ``solver`` every field must equal the old one;
3. only ``metadata_props`` changes: the serialized graph is compared before and after, the file
   passes ``onnx.checker`` (full check) and loads in ``OnnxPolicy``; the write is atomic.

Prints what changed and the new sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Metadata fields this refresh may change.
REFRESHED = {"observation_range", "training_data", "solver"}


def refresh(model_path: Path, checkpoint_path: Path) -> dict:
    import onnx

    from flow_policy_ros.errors import ModelFileError
    from flow_policy_ros.export.onnx_export import build_metadata
    from flow_policy_ros.policy.checkpoint import file_sha256, load_checkpoint
    from flow_policy_ros.runtime.metadata import METADATA_KEY, PolicyMetadata
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ModelFileError(f"{model_path}: no '{METADATA_KEY}' metadata to refresh")
    old_json = json.loads(props[METADATA_KEY])
    old = PolicyMetadata.from_json(props[METADATA_KEY], where=str(model_path))
    if file_sha256(checkpoint_path) != old.checkpoint_sha256:
        raise ModelFileError(f"{model_path}: exported from checkpoint {old.checkpoint_sha256[:12]}, not {checkpoint_path}")
    new = build_metadata(load_checkpoint(checkpoint_path), old.name, old.euler_steps, checkpoint_path,
                         old_json.get("solver", "euler"))
    new_json = json.loads(new.to_json())
    changed = sorted(k for k in set(old_json) | set(new_json) if old_json.get(k) != new_json.get(k))
    unexpected = [k for k in changed if k not in REFRESHED]
    if unexpected:
        raise ModelFileError(f"{model_path}: the current exporter's metadata also differs in {unexpected}; re-export instead")
    graph_before = model.graph.SerializeToString()
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = new.to_json()
    assert model.graph.SerializeToString() == graph_before
    tmp = model_path.with_name(f".{model_path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        if onnx.load(str(tmp)).graph.SerializeToString() != graph_before:
            raise ModelFileError(f"{model_path}: the graph changed on save")
        OnnxPolicy(tmp, providers=["CPUExecutionProvider"], warmup=1)
        tmp.replace(model_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"model": str(model_path), "changed": {k: [old_json.get(k), new_json.get(k)] for k in changed},
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported .onnx to refresh in place")
    parser.add_argument("checkpoint", type=Path, help="the checkpoint it was exported from")
    args = parser.parse_args()
    result = refresh(args.model, args.checkpoint)
    for key, (before, after) in result["changed"].items():
        print(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    print(f"{result['model']}: graph unchanged, sha256 {result['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
