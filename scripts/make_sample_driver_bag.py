"""Generate config/samples/driver_bag: a small rosbag2 as a real arm's driver would record it.

    python scripts/make_sample_driver_bag.py [--out config/samples/driver_bag]

The first 1.0 s of one held-out scripted-expert `reach` episode (episode seed 3_000_000, the
`--seed 3` collection README replays) on the PyBullet iiwa, re-labelled as a driver publishes it:

- /joint_states (sensor_msgs/JointState) at 60 Hz with the driver's joint names ``lbr_joint_0`` …
  ``lbr_joint_6`` (config/example_joint_map.yaml maps them onto the model's ``lbr_iiwa_joint_1..7``),
  in a different, shuffled order in every message;
- /goal (geometry_msgs/PointStamped), once at the start;
- /commands (std_msgs/Float64MultiArray, a forward position controller's command) at the control
  rate, in the controller's joint order ``lbr_joint_0..6``.

It replays with the shipped model and the joint map (``flow-policy replay config/samples/driver_bag
--model models/iiwa_reach.onnx --out out/replay_driver --joint-map config/example_joint_map.yaml``);
without the map, replay says which joints are missing. The content is deterministic (fixed seeds;
test/test_sample_driver_bag.py regenerates it and compares every message).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.recording import EpisodeRecording

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "config" / "samples" / "driver_bag"
EPISODE_SEED = 3_000_000
SECONDS = 1.0
JOINT_STATE_EVERY = 4  # of the simulator's 240 Hz samples: 60 Hz
SHUFFLE_SEED = 23


def driver_name(model_name: str) -> str:
    """'lbr_iiwa_joint_3' -> 'lbr_joint_2' (the example joint map, inverted)."""
    return f"lbr_joint_{int(model_name.rsplit('_', 1)[1]) - 1}"


def expert_recording() -> EpisodeRecording:
    from flow_policy_ros.sim.rollout import run_expert_episode

    return run_expert_episode("reach", EPISODE_SEED)


def write_driver_bag(rec: EpisodeRecording, out: Path) -> Path:
    """Write the first ``SECONDS`` of ``rec`` as the driver's bag at ``out`` (mcap; refuses to overwrite)."""
    start = int(rec.joint_times_ns[0])
    end = start + int(SECONDS * 1e9)
    names = [driver_name(n) for n in rec.joint_names]
    shuffler = np.random.default_rng(SHUFFLE_SEED)
    with bagio.BagWriter(out, "mcap") as bag:
        bag.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(int(rec.goal_times_ns[0]), rec.goals[0]),
                  int(rec.goal_times_ns[0]))
        for k in range(0, len(rec.joint_times_ns), JOINT_STATE_EVERY):
            t = int(rec.joint_times_ns[k])
            if t > end:
                break
            order = shuffler.permutation(len(names))
            bag.write("/joint_states", bagio.JOINT_STATE,
                      bagio.joint_state_msg(t, [names[i] for i in order], rec.positions[k][order],
                                            rec.velocities[k][order]), t)
        columns = [rec.command_joint_names.index(n) for n in rec.joint_names]  # controller order = lbr_joint_0..6
        for t, command in zip(rec.command_times_ns, rec.commands):
            if int(t) > end:
                break
            bag.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(command[columns]), int(t))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"bag directory to create (default {DEFAULT_OUT})")
    args = parser.parse_args()
    write_driver_bag(expert_recording(), args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
