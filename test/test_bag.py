"""rosbag2 episode files: exact round trips, joint matching by name, every bad-input case."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jtc_bags
import numpy as np
import pytest

from flow_policy_ros.data.bag import (
    CONTROLLER_STATE,
    CONTROLLER_STATE_OLDER_MSGS,
    FLOAT64_MULTI_ARRAY,
    JOINT_STATE,
    JOINT_TRAJECTORY,
    POINT_STAMPED,
    BagWriter,
    controller_state_msg,
    deserialize,
    float64_multi_array_msg,
    iter_raw_messages,
    joint_state_msg,
    joint_trajectory_msg,
    list_topics,
    point_stamped_msg,
    read_episode_bag,
    write_episode_bag,
)
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.errors import BagError
from flow_policy_ros.policy.config import DataConfig

EPOCH = 1_700_000_000_000_000_000
NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]


def make_recording(steps: int = 40, seed: int = 0) -> EpisodeRecording:
    rng = np.random.default_rng(seed)
    times = EPOCH + 20_000_000 * np.arange(steps, dtype=np.int64)
    return EpisodeRecording(
        joint_names=list(NAMES), joint_times_ns=times + 1_000,  # states stamped just after the tick
        positions=rng.normal(size=(steps, 7)), velocities=rng.normal(size=(steps, 7)),
        goal_times_ns=times[[0, steps // 2]], goals=rng.normal(size=(2, 3)),
        command_joint_names=list(NAMES), command_times_ns=times, commands=rng.normal(size=(steps, 7)),
        metadata={"task": "reach", "seed": seed, "success": True},
    )


def assert_same(a: EpisodeRecording, b: EpisodeRecording) -> None:
    assert a.joint_names == b.joint_names and a.command_joint_names == b.command_joint_names
    for name in ("joint_times_ns", "positions", "velocities", "goal_times_ns", "goals", "command_times_ns",
                 "commands"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.metadata == b.metadata


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def data_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_is_exact(tmp_path: Path, storage: str) -> None:
    rec = make_recording()
    bag = tmp_path / "ep"
    write_episode_bag(bag, rec, storage)
    assert (bag / "episode.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ep"]  # no temp dir left behind
    assert_same(read_episode_bag(bag), rec)
    assert list_topics(bag)["/joint_states"] == (JOINT_STATE, 40)


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    bag = tmp_path / "ep"
    bag.mkdir()
    with pytest.raises(BagError, match="already exists"):
        write_episode_bag(bag, make_recording())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_joints_are_matched_by_name_in_every_message(tmp_path: Path, storage: str) -> None:
    rng = np.random.default_rng(1)
    rec = make_recording()
    bag = tmp_path / "shuffled"
    with BagWriter(bag, storage) as out:
        for t, pos, vel in zip(rec.joint_times_ns, rec.positions, rec.velocities):
            order = rng.permutation(7)  # a different order in every message
            out.write("/joint_states", JOINT_STATE,
                      joint_state_msg(t, [NAMES[i] for i in order], pos[order], vel[order]), t)
        for t, goal in zip(rec.goal_times_ns, rec.goals):
            out.write("/goal", POINT_STAMPED, point_stamped_msg(t, goal), t)
        for t, cmd in zip(rec.command_times_ns, rec.commands):
            out.write("/commands", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(cmd), t)
    back = read_episode_bag(bag, joint_names=NAMES)
    rec.metadata = {}
    assert_same(back, rec)
    subset = read_episode_bag(bag, joint_names=NAMES[::-2], command_joint_names=NAMES)
    np.testing.assert_array_equal(subset.positions, rec.positions[:, ::-2])


def test_message_missing_a_joint_is_skipped_and_counted(tmp_path: Path) -> None:
    rec = make_recording(steps=5)
    bag = tmp_path / "partial"
    with BagWriter(bag) as out:
        for k, (t, pos, vel) in enumerate(zip(rec.joint_times_ns, rec.positions, rec.velocities)):
            keep = 6 if k == 2 else 7  # message 2 lacks the last joint
            out.write("/joint_states", JOINT_STATE, joint_state_msg(t, NAMES[:keep], pos[:keep], vel[:keep]), t)
        out.write("/goal", POINT_STAMPED, point_stamped_msg(EPOCH, rec.goals[0]), EPOCH)
        out.write("/commands", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(rec.commands[0]), EPOCH)
    back = read_episode_bag(bag, joint_names=NAMES)
    assert back.metadata == {"skipped_joint_states": 1}
    np.testing.assert_array_equal(back.joint_times_ns, rec.joint_times_ns[[0, 1, 3, 4]])


def test_zero_stamp_falls_back_to_log_time(tmp_path: Path) -> None:
    bag = tmp_path / "zero"
    with BagWriter(bag) as out:
        out.write("/joint_states", JOINT_STATE, joint_state_msg(0, NAMES, np.zeros(7), np.zeros(7)), EPOCH + 5)
        out.write("/goal", POINT_STAMPED, point_stamped_msg(0, np.zeros(3)), EPOCH + 7)
        out.write("/commands", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(np.zeros(7)), EPOCH + 9)
    back = read_episode_bag(bag)
    assert back.joint_times_ns.tolist() == [EPOCH + 5]
    assert back.goal_times_ns.tolist() == [EPOCH + 7]
    assert back.command_times_ns.tolist() == [EPOCH + 9]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reading_never_modifies_the_bag(tmp_path: Path, storage: str) -> None:
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording(), storage)
    before = tree_digest(bag)
    read_episode_bag(bag)
    list(iter_raw_messages(bag))
    assert tree_digest(bag) == before


def test_raw_iterator_and_extra_topics(tmp_path: Path) -> None:
    chunk = np.arange(14, dtype=np.float64).reshape(2, 7)
    bag = tmp_path / "pred"
    with BagWriter(bag, "sqlite3") as out:
        out.write("/chunk", JOINT_TRAJECTORY, joint_trajectory_msg(EPOCH, NAMES, chunk, 0.02), EPOCH)
    (raw,) = list(iter_raw_messages(bag))
    assert (raw.topic, raw.msgtype, raw.log_time_ns) == ("/chunk", JOINT_TRAJECTORY, EPOCH)
    msg = deserialize(raw.data, raw.msgtype)
    np.testing.assert_array_equal(np.stack([p.positions for p in msg.points]), chunk)
    assert [p.time_from_start.nanosec for p in msg.points] == [20_000_000, 40_000_000]


# ----------------------------------------------------------------- bad input


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="no such bag"):
        read_episode_bag(tmp_path / "nope")


def test_empty_dir_is_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="not a rosbag2 directory"):
        read_episode_bag(tmp_path)


def test_bag_without_messages(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "empty"):
        pass
    with pytest.raises(BagError, match="empty bag"):
        read_episode_bag(tmp_path / "empty")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_file(tmp_path: Path, storage: str, damage: str) -> None:
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording(steps=200), storage)
    file = data_file(bag)
    data = file.read_bytes()
    file.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(BagError, match=str(bag)):
        read_episode_bag(bag)


def test_missing_topic(tmp_path: Path) -> None:
    bag = tmp_path / "nocmd"
    with BagWriter(bag) as out:
        out.write("/joint_states", JOINT_STATE, joint_state_msg(EPOCH, NAMES, np.zeros(7), np.zeros(7)), EPOCH)
        out.write("/goal", POINT_STAMPED, point_stamped_msg(EPOCH, np.zeros(3)), EPOCH)
    with pytest.raises(BagError, match="missing topic /commands"):
        read_episode_bag(bag)


def test_wrong_message_type(tmp_path: Path) -> None:
    bag = tmp_path / "wrongtype"
    with BagWriter(bag) as out:
        out.write("/joint_states", JOINT_STATE, joint_state_msg(EPOCH, NAMES, np.zeros(7), np.zeros(7)), EPOCH)
        out.write("/goal", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(np.zeros(3)), EPOCH)
        out.write("/commands", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(np.zeros(7)), EPOCH)
    with pytest.raises(BagError, match="topic /goal has type std_msgs/msg/Float64MultiArray"):
        read_episode_bag(bag)


def test_unknown_joint(tmp_path: Path) -> None:
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording())
    with pytest.raises(BagError, match="unknown joint name.*'elbow'"):
        read_episode_bag(bag, joint_names=[*NAMES[:6], "elbow"])


def test_command_width_disagreeing_with_command_joints(tmp_path: Path) -> None:
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording())
    with pytest.raises(BagError, match="7 values per message, expected 2"):
        read_episode_bag(bag, command_joint_names=NAMES[:2])


def test_commands_are_optional_when_actions_come_from_joint_states(tmp_path: Path) -> None:
    bag = tmp_path / "teleop"
    with BagWriter(bag) as out:
        out.write("/joint_states", JOINT_STATE, joint_state_msg(EPOCH, NAMES, np.zeros(7), np.zeros(7)), EPOCH)
        out.write("/goal", POINT_STAMPED, point_stamped_msg(EPOCH, np.zeros(3)), EPOCH)
    back = read_episode_bag(bag, DataConfig(action_source="joint_states"))
    assert back.commands.shape == (0, 7) and len(back.command_times_ns) == 0


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BagWriter(tmp_path / "ep") as out:
        out.write("/goal", POINT_STAMPED, point_stamped_msg(EPOCH, np.zeros(3)), EPOCH)
        raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []


def test_joint_states_without_velocities_read_as_nan(tmp_path: Path) -> None:
    """A driver that publishes no velocity (an empty array, legal in JointState) still gives positions."""
    rec = make_recording()
    bag = tmp_path / "novel"
    with BagWriter(bag, "mcap") as out:
        for t, pos in zip(rec.joint_times_ns, rec.positions):
            out.write("/joint_states", JOINT_STATE, joint_state_msg(t, NAMES, pos, np.zeros(0)), t)
        for t, goal in zip(rec.goal_times_ns, rec.goals):
            out.write("/goal", POINT_STAMPED, point_stamped_msg(t, goal), t)
        for t, cmd in zip(rec.command_times_ns, rec.commands):
            out.write("/commands", FLOAT64_MULTI_ARRAY, float64_multi_array_msg(cmd), t)
    back = read_episode_bag(bag, joint_names=NAMES)
    np.testing.assert_array_equal(back.positions, rec.positions)
    assert np.isnan(back.velocities).all()


@pytest.mark.parametrize("payload, fragment", [
    (b"\x00\x01\x00\x00\x05", "cannot decode message #3 on /joint_states (sensor_msgs/msg/JointState)"),  # short read
    (None, "cannot decode message #3 on /joint_states (sensor_msgs/msg/JointState)"),  # a flipped length field
])
def test_one_undecodable_message_names_bag_topic_and_index(tmp_path: Path, payload: bytes | None, fragment: str) -> None:
    """A message whose CDR bytes are damaged (sqlite3 storage: rewrite that one row) is one BagError line naming
    the bag, the topic and the message's index on it; the bag is left as it was."""
    import sqlite3

    bag = tmp_path / "bag"
    write_episode_bag(bag, make_recording(), "sqlite3")
    db = next(bag.glob("*.db3"))
    with sqlite3.connect(db) as con:
        topic_id = con.execute("SELECT id FROM topics WHERE name = '/joint_states'").fetchone()[0]
        row, data = con.execute("SELECT id, data FROM messages WHERE topic_id = ? ORDER BY timestamp LIMIT 1 OFFSET 3",
                                (topic_id,)).fetchone()
        if payload is None:  # the header's frame_id length (bytes 12..15 after the 4-byte CDR header) -> 2^31
            payload = data[:12] + b"\xff\xff\xff\x7f" + data[16:]
        con.execute("UPDATE messages SET data = ? WHERE id = ?", (payload, row))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(BagError) as info:
        read_episode_bag(bag)
    message = str(info.value)
    assert message.startswith(str(bag)) and fragment in message and len(message.splitlines()) == 1, message
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


# --------------------------------------------------------------------------- JointTrajectoryController topics

JTC = DataConfig(action_source="joint_trajectory")
STATE = DataConfig(action_source="controller_state")


def jtc_bag(path: Path, topic: str, msgtype: str, messages: list[tuple[int, object]], storage: str = "mcap") -> Path:
    """Joint states and goal over 10 ticks plus ``messages`` (log time, msg) on ``topic``."""
    with BagWriter(path, storage) as out:
        jtc_bags.write_joint_states_and_goal(out, 10, seed=0)
        for t, msg in messages:
            out.write(topic, msgtype, msg, t)
    return path


def trajectory(t: int, names: list[str] = NAMES, points: int = 3, stamp: int | None = None) -> tuple[int, object]:
    positions = 0.1 * np.arange(points * len(names)).reshape(points, len(names))
    return t, joint_trajectory_msg(t if stamp is None else stamp, names, positions, 0.02)


def state(t: int, names: list[str] = NAMES, reference: np.ndarray | None = None) -> tuple[int, object]:
    return t, controller_state_msg(t, names, np.full(len(names), 0.1) if reference is None else reference)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_trajectory_and_controller_state_read_by_name(tmp_path: Path, storage: str) -> None:
    shuffled = NAMES[::-1]
    bag = jtc_bag(tmp_path / "jt", jtc_bags.JTC_TOPIC, JOINT_TRAJECTORY,
                  [trajectory(EPOCH, shuffled), trajectory(EPOCH + 10**7, shuffled, stamp=0)], storage)
    targets = read_episode_bag(bag, JTC, joint_names=NAMES).targets
    assert targets is not None and targets.joint_names == tuple(NAMES)
    # the second trajectory has a zero stamp: it starts at its log time; point 0 of row j holds 0.1·(7 − 1 − j)
    np.testing.assert_allclose(targets.sample(np.array([EPOCH + 10**7 + 2 * 10**7]))[0], 0.1 * np.arange(6, -1, -1))
    assert targets.start_ns == EPOCH + 2 * 10**7 and targets.end_ns == EPOCH + 10**7 + 6 * 10**7
    ref = np.linspace(-0.3, 0.3, 7)
    bag = jtc_bag(tmp_path / "cs", jtc_bags.STATE_TOPIC, CONTROLLER_STATE,
                  [state(EPOCH + k * 10**7, shuffled, ref[::-1] + k) for k in range(3)], storage)
    targets = read_episode_bag(bag, STATE, joint_names=NAMES).targets
    np.testing.assert_allclose(targets.sample(np.array([EPOCH + 15_000_000]))[0], ref + 1.5, rtol=0, atol=1e-12)


def test_controller_state_of_an_older_distro_reads_desired(tmp_path: Path) -> None:
    """A Foxy-era bag (control_msgs 2: header, joint_names, desired, actual, error) embeds its own definition."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    old = get_typestore(Stores.ROS2_FOXY)
    old.register(get_types_from_msg("std_msgs/Header header\nstring[] joint_names\n"
                                    "trajectory_msgs/JointTrajectoryPoint desired\n"
                                    "trajectory_msgs/JointTrajectoryPoint actual\n"
                                    "trajectory_msgs/JointTrajectoryPoint error\n", CONTROLLER_STATE))
    types = old.types
    bag = tmp_path / "foxy"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=old) for topic, msgtype in
                 (("/joint_states", JOINT_STATE), ("/goal", POINT_STAMPED), (jtc_bags.STATE_TOPIC, CONTROLLER_STATE))}
        for k in range(3):
            t = EPOCH + k * 10**7
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                                  frame_id="")
            zero = np.zeros(7)
            js = types[JOINT_STATE](header=header, name=NAMES, position=zero, velocity=zero, effort=np.zeros(0))
            point = types["trajectory_msgs/msg/JointTrajectoryPoint"]
            dur = types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
            pts = [point(positions=np.full(7, k * 0.1 + i), velocities=np.zeros(0), accelerations=np.zeros(0),
                         effort=np.zeros(0), time_from_start=dur) for i in range(3)]
            cs = types[CONTROLLER_STATE](header=header, joint_names=NAMES, desired=pts[0], actual=pts[1], error=pts[2])
            goal = types[POINT_STAMPED](header=header, point=types["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0))
            for topic, msg in (("/joint_states", js), ("/goal", goal), (jtc_bags.STATE_TOPIC, cs)):
                writer.write(conns[topic], t, old.serialize_cdr(msg, conns[topic].msgtype))
    targets = read_episode_bag(bag, STATE, joint_names=NAMES).targets
    np.testing.assert_allclose(targets.sample(np.array([EPOCH + 15_000_000]))[0], np.full(7, 0.15), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", list(CONTROLLER_STATE_OLDER_MSGS))
def test_controller_state_of_an_older_layout_in_a_bag_without_definitions(tmp_path: Path, layout: str) -> None:
    """A Humble sqlite3 bag embeds no message definitions: its controller states decode with the older layout they fit."""
    import sqlite3

    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    old = get_typestore(Stores.ROS2_KILTED)
    old.register(get_types_from_msg(CONTROLLER_STATE_OLDER_MSGS[layout], CONTROLLER_STATE))
    point = old.types["trajectory_msgs/msg/JointTrajectoryPoint"]
    multi = old.types["trajectory_msgs/msg/MultiDOFJointTrajectoryPoint"]
    duration = old.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
    fields = {name for name, _ in old.fielddefs[CONTROLLER_STATE][1]}
    bag = tmp_path / "humble"
    with BagWriter(bag, "sqlite3") as out:
        jtc_bags.write_joint_states_and_goal(out, 10, seed=0)
        for k in range(3):
            t = EPOCH + k * 10**7
            values = {f: point(positions=np.full(7, 0.1 * k), velocities=np.zeros(0), accelerations=np.zeros(0),
                               effort=np.zeros(0), time_from_start=duration) for f in ("reference", "desired")}
            kwargs = {f: values.get(f, point(positions=np.zeros(7), velocities=np.zeros(0), accelerations=np.zeros(0),
                                             effort=np.zeros(0), time_from_start=duration))
                      for f in fields if f not in ("header", "joint_names", "multi_dof_joint_names")
                      and not f.startswith("multi_dof_")}
            kwargs.update({f: multi(transforms=[], velocities=[], accelerations=[], time_from_start=duration)
                           for f in fields if f.startswith("multi_dof_") and f != "multi_dof_joint_names"})
            if "multi_dof_joint_names" in fields:
                kwargs["multi_dof_joint_names"] = []
            msg = old.types[CONTROLLER_STATE](header=controller_state_msg(t, NAMES, np.zeros(7)).header,
                                              joint_names=NAMES, **kwargs)
            out.write_raw(jtc_bags.STATE_TOPIC, CONTROLLER_STATE, old.serialize_cdr(msg, CONTROLLER_STATE), t)
    with sqlite3.connect(next(bag.glob("*.db3"))) as con:
        con.execute("DELETE FROM message_definitions")  # as rosbag2 on Humble writes it: no definitions
    targets = read_episode_bag(bag, STATE, joint_names=NAMES).targets
    np.testing.assert_allclose(targets.sample(np.array([EPOCH + 15_000_000]))[0], np.full(7, 0.15), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("cfg", "topic", "msgtype", "messages", "fragment"), [
    (JTC, "/other", JOINT_TRAJECTORY, [trajectory(EPOCH)],
     r"missing topic /joint_trajectory_controller/joint_trajectory \(data.trajectory_topic for data.action_source "
     r"'joint_trajectory'\); the bag has \['/goal', '/joint_states', '/other'\]"),
    (STATE, "/other", CONTROLLER_STATE, [state(EPOCH)],
     r"missing topic /joint_trajectory_controller/controller_state \(data.controller_state_topic"),
    (JTC, jtc_bags.JTC_TOPIC, JOINT_TRAJECTORY, [trajectory(EPOCH), trajectory(EPOCH + 10**7, NAMES[:6])],
     r"/joint_trajectory_controller/joint_trajectory message #1: JointTrajectory lacks joint\(s\) \['lbr_iiwa_joint_7'\]"),
    (STATE, jtc_bags.STATE_TOPIC, CONTROLLER_STATE, [state(EPOCH, NAMES[1:])],
     r"/joint_trajectory_controller/controller_state message #0 lacks joint\(s\) \['lbr_iiwa_joint_1'\]"),
    (JTC, jtc_bags.JTC_TOPIC, JOINT_TRAJECTORY, [trajectory(EPOCH, points=0), trajectory(EPOCH + 1, points=0)],
     r"/joint_trajectory_controller/joint_trajectory: no trajectory with points"),
    (STATE, jtc_bags.STATE_TOPIC, CONTROLLER_STATE, [state(EPOCH, reference=np.zeros(0))],
     r"controller_state message #0 has no reference positions"),
    (JTC, jtc_bags.JTC_TOPIC, JOINT_TRAJECTORY, [trajectory(EPOCH, stamp=EPOCH + 3 * 10**9), trajectory(EPOCH + 10**7)],
     r"joint_trajectory: message #1 starts at \d+ ns, 2.99 s before message #0 at \d+ ns \(stamps on another clock\?\)"),
    (STATE, jtc_bags.STATE_TOPIC, CONTROLLER_STATE, [state(EPOCH), state(EPOCH + 10**7), (EPOCH + 2 * 10**7, state(EPOCH)[1])],
     r"controller_state: message #2 is stamped \d+ ns, not after message #1 at \d+ ns \(stamps must increase\)"),
    (JTC, jtc_bags.JTC_TOPIC, FLOAT64_MULTI_ARRAY, [(EPOCH, float64_multi_array_msg(np.zeros(7)))],
     r"topic /joint_trajectory_controller/joint_trajectory has type std_msgs/msg/Float64MultiArray, "
     r"expected trajectory_msgs/msg/JointTrajectory"),
], ids=["no-trajectory-topic", "no-state-topic", "trajectory-lacks-joint", "state-lacks-joint", "only-empty-trajectories",
        "state-without-reference", "trajectory-stamps-rewind", "state-stamps-repeat", "wrong-type"])
def test_jtc_sources_bad_input_is_one_line_naming_bag_and_topic(tmp_path: Path, cfg: DataConfig, topic: str,
                                                                 msgtype: str, messages: list, fragment: str) -> None:
    bag = jtc_bag(tmp_path / "bag", topic, msgtype, messages)
    with pytest.raises(BagError, match=fragment) as info:
        read_episode_bag(bag, cfg, joint_names=NAMES)
    assert str(info.value).startswith(str(bag)) and "\n" not in str(info.value)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_zstd_round_trip_is_exact(tmp_path: Path, storage: str) -> None:
    """compression='zstd' (mcap: compressed chunks; sqlite3: compressed messages) reads back exactly."""
    rec = make_recording()
    bag = tmp_path / "ep"
    write_episode_bag(bag, rec, storage, compression="zstd")
    if storage == "mcap":
        assert b"zstd" in data_file(bag).read_bytes()  # the chunk record names its compression
    assert_same(read_episode_bag(bag), rec)


def test_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="unknown compression 'gzip'"):
        write_episode_bag(tmp_path / "ep", make_recording(), "mcap", compression="gzip")


def test_corrupt_zstd_chunk_is_one_bag_error_naming_bag_and_message(tmp_path: Path) -> None:
    """Flipped bytes inside a zstd chunk: the decompressor's ZstdError (not a rosbags error type) ends
    as one BagError naming the bag, the topics read and the message index, with the cause chained."""
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording(steps=200), "mcap", compression="zstd")
    file = data_file(bag)
    data = bytearray(file.read_bytes())
    start = data.find(b"zstd") + 4 + 8  # the chunk's compressed records follow its compression and length
    for j in range(start + 40, start + 48):
        data[j] ^= 0x5A
    file.write_bytes(bytes(data))
    with pytest.raises(BagError) as info:
        read_episode_bag(bag)
    message = str(info.value)
    assert message.startswith(f"{bag}: corrupt or truncated bag: cannot read message 0 of ") and "/joint_states" in message
    assert len(message.splitlines()) == 1 and "the last one read: none" in message
    assert info.value.__cause__ is not None and type(info.value.__cause__).__name__ != "BagError"


@pytest.mark.parametrize(("content", "fragment"), [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
                                                   (b"[" * 100_000, "not valid JSON"), (b"[1, 2]", "expected a JSON object")])
def test_bad_episode_json_is_one_bag_error(tmp_path: Path, content: bytes, fragment: str) -> None:
    """episode.json that is not JSON, not UTF-8, nested beyond the parser's recursion limit, or not an object."""
    bag = tmp_path / "ep"
    write_episode_bag(bag, make_recording(), "mcap")
    (bag / "episode.json").write_bytes(content)
    with pytest.raises(BagError, match=fragment) as info:
        read_episode_bag(bag)
    assert str(info.value).startswith(str(bag / "episode.json")) and len(str(info.value).splitlines()) == 1
