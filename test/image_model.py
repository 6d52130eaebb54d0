"""A tiny camera model for the node, bag and replay tests: a real ONNX graph run by ONNX Runtime,
untrained, with an ``image_<camera>`` uint8 input declared in its metadata.

It is the package's own export of a small seeded state-only policy (test/model_factory.py,
observation = joint positions and velocities) with one graph input added per camera,
``image_<camera>`` uint8 [B, Hc, Wc, 3], and the metadata's observation spec extended by the
matching ``image.<camera>`` features. The frame really enters the computation: the actions are
shifted by ``IMAGE_GAIN_RAD · (mean pixel / 255 − 0.5)`` on every joint, so a brighter frame moves
every target (up to ±0.05 rad). The real camera models (conv encoder inside the graph) come from
``flow-policy export``; this stand-in only needs the same interface.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_factory import json_metadata, make_tiny_model

from flow_policy_ros.contract import image_feature

#: How far (rad) the mean brightness of the frame shifts every action: ±IMAGE_GAIN_RAD / 2.
IMAGE_GAIN_RAD = 0.1
#: (height, width) of the tiny model's frames (sim_node's camera renders 96x96 by default: the
#: end-to-end test passes that size).
DEFAULT_SIZE = (24, 32)


def make_image_model(path: Path, cameras: tuple[str, ...] = ("front",), size: tuple[int, int] = DEFAULT_SIZE,
                     max_age_s: float = 0.1, compressed: bool = False, seed: int = 0, **overrides: object) -> Path:
    """Write the tiny camera model (opset of the package's export: 17, ReduceMean with an axes attribute) to ``path`` (.onnx) and return it.

    Args:
        cameras: camera names; one ``image_<camera>`` input and ``image.<camera>`` feature each.
        size: (Hc, Wc) of every camera's frames.
        max_age_s: each image feature's max age (s).
        compressed: the features' topics are ``.../compressed`` (CompressedImage).
        overrides: PolicyConfig fields of the base policy (horizon, ...).
    """
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    base = path.with_name(path.stem + "_state.onnx")
    observation = {"joint_names": list(overrides.pop("joint_names", _iiwa())),
                   "fields": ["joint_positions", "joint_velocities"]}
    make_tiny_model(base, seed=seed, observation=observation, guided_fields=(), **overrides)
    model = onnx.load(str(base))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["actions_state" if o == "actions" else o for o in node.output]
    height, width = size
    graph.initializer.extend([
        helper.make_tensor("img_squeeze", TensorProto.INT64, [1], [3]),
        helper.make_tensor("img_scale", TensorProto.FLOAT, [1], [IMAGE_GAIN_RAD / 255.0]),
        helper.make_tensor("img_center", TensorProto.FLOAT, [1], [IMAGE_GAIN_RAD / 2]),
    ])
    total = "actions_state"
    for i, camera in enumerate(cameras):
        name = f"image_{camera}"
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", height, width, 3]))
        graph.node.extend([
            helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", [f"{name}_f"], [f"{name}_mean"], axes=[1, 2, 3], keepdims=1),  # (B, 1, 1, 1)
            helper.make_node("Squeeze", [f"{name}_mean", "img_squeeze"], [f"{name}_m3"]),  # (B, 1, 1)
            helper.make_node("Mul", [f"{name}_m3", "img_scale"], [f"{name}_scaled"]),
            helper.make_node("Sub", [f"{name}_scaled", "img_center"], [f"{name}_shift"]),
            helper.make_node("Add", [total, f"{name}_shift"], ["actions" if i == len(cameras) - 1 else f"acc_{i}"]),
        ])
        total = f"acc_{i}"
    meta = json_metadata(model)
    spec = meta["observation"]
    spec["fields"] = list(spec["fields"]) + [f"image.{c}" for c in cameras]
    spec["features"] = list(spec["features"]) + [image_feature(c, height, width, max_age_s, compressed).to_json()
                                                 for c in cameras]
    meta["name"] = path.stem
    for prop in model.metadata_props:
        if prop.key == "flow_policy":
            prop.value = json.dumps(meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    base.unlink()
    base.with_suffix(".pt").unlink(missing_ok=True)
    return path


def _iiwa() -> tuple[str, ...]:
    from flow_policy_ros.contract import IIWA_JOINT_NAMES

    return IIWA_JOINT_NAMES
