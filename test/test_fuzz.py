"""Fuzzing, bounded and seeded: hostile model files, bags and DDS messages.

1. Mutated ONNX files (byte flips, truncation, wrong output shape, NaN-producing graphs built with
   onnx.helper, malformed metadata) into ``OnnxPolicy``: refused with a one-line ModelFileError naming the
   file, or loaded and then every ``predict`` returns a finite (H, A) chunk or raises InvalidOutputError /
   ObservationError. Runs in a child process, so a native crash of ONNX Runtime would fail this test
   instead of the whole session.
2. Mutated bags (byte flips in the mcap bytes of single messages, anywhere in the file, truncation,
   damaged sqlite3 rows) into the bag reader, ``flow-policy replay`` and ``flow-policy train``: a one-line
   BagError/DatasetError (exit 2) or a normal result; never another exception, never a hang; the inputs'
   bytes are unchanged. The same for compressed bags: zstd- and lz4-compressed mcap chunks (flips in the
   compressed bytes, anywhere, truncation) and zstd message-compressed sqlite3 (flipped rows, flips
   anywhere in the database file). rosbags writes zstd chunks itself (``CompressionMode.STORAGE``); it
   has no lz4 writer, so :class:`Lz4McapWriter` swaps the chunk compressor of its mcap writer for
   ``lz4.frame.compress`` (the reader decompresses lz4 chunks, as written by the mcap CLI and rosbag2).
3. Random and mutated CDR bytes published raw (``Publisher.publish(bytes)``) onto a running policy_node's
   ``joint_states`` and ``goal`` topics, mixed with good joint states: the node stays up, every command is
   finite, inside the joint limits and within v·dt of the previous one, and it shuts down cleanly with no
   traceback.

Acceptance everywhere: no traceback, no hang, no command outside the limits, inputs unchanged. The counts
are printed in the session's terminal summary (see ``conftest.pytest_terminal_summary``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, node_env
from fake_robot import SpinningNode
from model_factory import make_tiny_model
from rosbags.rosbag2 import CompressionMode, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter

from flow_policy_ros.cli import main
from flow_policy_ros.contract import IIWA_JOINT_NAMES, IIWA_POSITION_LOWER, IIWA_POSITION_UPPER, IIWA_VELOCITY_LIMIT
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.errors import BagError

#: name -> Counter of outcomes; printed by conftest.pytest_terminal_summary.
FUZZ_COUNTS: dict[str, Counter] = {}
H = 8
EPOCH = 1_700_000_000_000_000_000
NAMES = list(IIWA_JOINT_NAMES)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@contextmanager
def no_hang(seconds: int, what: str) -> Iterator[None]:
    """Fail (instead of hanging the session) when the block runs longer than ``seconds``."""
    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("fuzz_model") / "tiny.onnx", seed=2, horizon=H)


# --------------------------------------------------------------------------- 1. model files


def onnx_campaign(base: str, out_dir: str, seed: int = 0) -> dict:
    """Mutate ``base`` into ``out_dir`` and feed every variant to OnnxPolicy (run in a child process).

    Returns {'counts': {...}, 'failures': [...]} as JSON-able data.
    """
    import onnx

    from flow_policy_ros.errors import InvalidOutputError, ModelFileError, ObservationError
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
    sys.path.insert(0, str(Path(__file__).parent))
    from model_factory import json_metadata, with_broken_output

    rng = np.random.default_rng(seed)
    base_path, out = Path(base), Path(out_dir)
    raw = base_path.read_bytes()
    variants: list[tuple[str, Path]] = []

    def add(name: str, data: bytes) -> None:
        path = out / f"{name}.onnx"
        path.write_bytes(data)
        variants.append((name, path))

    for i in range(40):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 9))):
            j = int(rng.integers(0, len(data)))
            data[j] ^= int(rng.integers(1, 256))
        add(f"flip{i}", bytes(data))
    for i in range(10):
        add(f"truncated{i}", raw[: int(rng.integers(0, len(raw)))])
    for kind in ("nan", "short", "declared_short", "nan_if_negative"):
        variants.append((kind, with_broken_output(base_path, out / f"{kind}.onnx", kind)))
    meta = json_metadata(onnx.load(str(base_path)))
    edits: dict[str, object] = {
        "no_horizon": {k: v for k, v in meta.items() if k != "horizon"},
        "horizon_text": {**meta, "horizon": "sixteen"},
        "obs_dim_wrong": {**meta, "obs_dim": 3},
        "limits_list": {**meta, "limits": [1, 2, 3]},
        "range_low_above_high": {**meta, "observation_range": {"low": [1.0] * 17, "high": [0.0] * 17}},
        "range_strings": {**meta, "observation_range": {"low": ["a"] * 17, "high": ["b"] * 17}},
        "range_short": {**meta, "observation_range": {"low": [0.0], "high": [1.0]}},
        "version_2": {**meta, "format_version": 2},
        "not_json": "{not json",
        "not_object": [1, 2],
    }
    for name, value in edits.items():
        model = onnx.load(str(base_path))
        model.metadata_props[0].value = value if isinstance(value, str) else json.dumps(value)
        path = out / f"meta_{name}.onnx"
        onnx.save(model, str(path))
        variants.append((f"meta_{name}", path))

    counts: Counter = Counter()
    failures: list[str] = []
    for name, path in variants:
        before = file_hash(path)
        try:
            policy = OnnxPolicy(path, providers=["CPUExecutionProvider"], warmup=0)
        except ModelFileError as exc:
            counts["refused at load"] += 1
            if len(str(exc).splitlines()) != 1 or str(path) not in str(exc):
                failures.append(f"{name}: refusal not one line naming the file: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            counts["loaded"] += 1
            m = policy.metadata
            for _ in range(10):
                obs = rng.uniform(-3.0, 3.0, m.obs_dim).astype(np.float32)
                try:
                    chunk = policy.predict(obs)
                except (InvalidOutputError, ObservationError):
                    counts["predict refused (invalid output)"] += 1
                    continue
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{name}: predict raised {type(exc).__name__}: {exc}")
                    break
                if chunk.shape != (m.horizon, m.action_dim) or not np.all(np.isfinite(chunk)):
                    failures.append(f"{name}: predict returned an invalid chunk {chunk.shape}")
                    break
                counts["finite chunks returned"] += 1
        if file_hash(path) != before:
            failures.append(f"{name}: the model file changed")
    counts["variants"] = len(variants)
    return {"counts": dict(counts), "failures": failures}


def test_fuzz_model_files(tiny_model: Path, tmp_path: Path) -> None:
    code = ("import json, sys; sys.path[:0] = ['test', '.']; import test_fuzz; "
            f"print(json.dumps(test_fuzz.onnx_campaign({str(tiny_model)!r}, {str(tmp_path)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=node_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"the ONNX fuzz child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = FUZZ_COUNTS["onnx files"] = Counter(result["counts"])
    assert not result["failures"], "\n".join(result["failures"])
    assert counts["refused at load"] >= 20 and counts["loaded"] >= 5 and counts["predict refused (invalid output)"] > 0, counts


# --------------------------------------------------------------------------- 2. bags


def base_recording(steps: int = 30, seed: int = 0) -> EpisodeRecording:
    rng = np.random.default_rng(seed)
    times = EPOCH + 20_000_000 * np.arange(steps, dtype=np.int64)
    q = 0.3 * np.sin(np.linspace(0, 2, steps))[:, None] + rng.uniform(-0.5, 0.5, 7)
    return EpisodeRecording(
        joint_names=NAMES, joint_times_ns=times + 1_000, positions=q, velocities=np.gradient(q, axis=0) / 0.02,
        goal_times_ns=times[:1], goals=[[0.5, 0.1, 0.4]], command_joint_names=NAMES, command_times_ns=times,
        commands=np.roll(q, -1, axis=0), metadata={"success": True, "task": "reach"},
    )


def mutated_bags(root: Path, seed: int = 0) -> list[tuple[str, Path]]:
    """Damaged copies of two small episode bags (mcap and sqlite3)."""
    rng = np.random.default_rng(seed)
    variants: list[tuple[str, Path]] = []
    mcap_base = root / "base_mcap"
    bagio.write_episode_bag(mcap_base, base_recording(), "mcap")
    mcap_file = next(mcap_base.glob("*.mcap"))
    raw = mcap_file.read_bytes()
    spans = []  # where each message's CDR bytes lie in the file (chunks are not compressed)
    for message in bagio.iter_raw_messages(mcap_base):
        start = raw.find(message.data)
        if start >= 0:
            spans.append((start, len(message.data)))

    def variant(name: str, data: bytes, base: Path = mcap_base, file: Path = mcap_file) -> None:
        target = root / name
        shutil.copytree(base, target)
        (target / file.name).write_bytes(data)
        variants.append((name, target))

    for i in range(40):  # flips inside one message's data
        data = bytearray(raw)
        start, size = spans[int(rng.integers(len(spans)))]
        for _ in range(int(rng.integers(1, 5))):
            j = start + int(rng.integers(size))
            data[j] = int(rng.integers(0, 256))
        variant(f"msgflip{i}", bytes(data))
    for i in range(15):  # flips anywhere (index, chunk headers, footer)
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 9))):
            j = int(rng.integers(len(data)))
            data[j] ^= int(rng.integers(1, 256))
        variant(f"flip{i}", bytes(data))
    for i in range(12):
        variant(f"truncated{i}", raw[: int(rng.integers(0, len(raw)))])
    db_base = root / "base_sqlite"
    bagio.write_episode_bag(db_base, base_recording(seed=1), "sqlite3")
    db_file = next(db_base.glob("*.db3"))
    for i in range(10):  # one damaged row: random bytes, a prefix, or flipped bytes
        target = root / f"row{i}"
        shutil.copytree(db_base, target)
        with sqlite3.connect(target / db_file.name) as con:
            rows = con.execute("SELECT id, data FROM messages").fetchall()
            row, data = rows[int(rng.integers(len(rows)))]
            choice = i % 3
            if choice == 0:
                data = rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
            elif choice == 1:
                data = data[: int(rng.integers(0, len(data)))]
            else:
                data = bytearray(data)
                for _ in range(3):
                    data[int(rng.integers(len(data)))] = int(rng.integers(0, 256))
                data = bytes(data)
            con.execute("UPDATE messages SET data = ? WHERE id = ?", (data, row))
        con.close()
        variants.append((f"row{i}", target))
    return variants


class Lz4McapWriter(McapWriter):
    """rosbags' mcap storage writer with lz4-frame chunks instead of zstd (rosbags writes only zstd)."""

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        import lz4.frame

        super().__init__(path, CompressionMode.STORAGE)
        self.compression, self.compressor = "lz4", lz4.frame.compress


@contextmanager
def lz4_mcap_writer() -> Iterator[None]:
    """While open, rosbags' Writer writes mcap storage with :class:`Lz4McapWriter`."""
    saved = Writer.STORAGE_PLUGINS
    Writer.STORAGE_PLUGINS = {**saved, StoragePlugin.MCAP: Lz4McapWriter}
    try:
        yield
    finally:
        Writer.STORAGE_PLUGINS = saved


def chunk_payloads(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each mcap Chunk record's (compressed) records field."""
    spans, pos = [], 8  # after the magic
    while pos + 9 <= len(raw):
        opcode, length = raw[pos], int.from_bytes(raw[pos + 1:pos + 9], "little")
        if opcode == 0x06:  # start, end, uncompressed size, crc, compression string, records length, records
            body = pos + 9
            name_len = int.from_bytes(raw[body + 28:body + 32], "little")
            records = body + 32 + name_len + 8
            spans.append((records, int.from_bytes(raw[records - 8:records], "little")))
        if opcode == 0x0F:  # footer
            break
        pos += 9 + length
    return spans


def flip(rng: np.random.Generator, raw: bytes, span: tuple[int, int], flips: int) -> bytes:
    """``raw`` with ``flips`` random bytes inside ``span`` (offset, size) XOR-ed with a non-zero value."""
    data = bytearray(raw)
    for _ in range(flips):
        data[span[0] + int(rng.integers(span[1]))] ^= int(rng.integers(1, 256))
    return bytes(data)


def mutated_compressed_bags(root: Path, seed: int = 0) -> list[tuple[str, Path]]:
    """Damaged copies of compressed episode bags: zstd and lz4 mcap chunks, zstd message-compressed sqlite3."""
    rng = np.random.default_rng(seed)
    variants: list[tuple[str, Path]] = []

    def variant(name: str, base: Path, file: Path, data: bytes) -> None:
        target = root / name
        shutil.copytree(base, target)
        (target / file.name).write_bytes(data)
        variants.append((name, target))

    for codec in ("zstd", "lz4"):
        base = root / f"base_{codec}_mcap"
        if codec == "lz4":
            with lz4_mcap_writer():
                bagio.write_episode_bag(base, base_recording(seed=2), "mcap")
        else:
            bagio.write_episode_bag(base, base_recording(seed=2), "mcap", compression="zstd")
        file = next(base.glob("*.mcap"))
        raw = file.read_bytes()
        chunks = chunk_payloads(raw)
        assert chunks and all(raw[s - 8 - len(codec):s - 8] == codec.encode() for s, _ in chunks), f"no {codec} chunk"
        for i in range(20):  # flips inside a compressed chunk
            variant(f"{codec}_chunkflip{i}", base, file, flip(rng, raw, chunks[int(rng.integers(len(chunks)))],
                                                              int(rng.integers(1, 5))))
        for i in range(8):  # flips anywhere
            variant(f"{codec}_flip{i}", base, file, flip(rng, raw, (0, len(raw)), int(rng.integers(1, 9))))
        for i in range(6):
            variant(f"{codec}_truncated{i}", base, file, raw[: int(rng.integers(0, len(raw)))])
    base = root / "base_zstd_sqlite"
    bagio.write_episode_bag(base, base_recording(seed=3), "sqlite3", compression="zstd")
    file = next(base.glob("*.db3"))
    raw = file.read_bytes()
    for i in range(8):  # flips anywhere in the database file
        variant(f"zstd_db_flip{i}", base, file, flip(rng, raw, (0, len(raw)), int(rng.integers(1, 9))))
    for i in range(8):  # one compressed row with flipped bytes
        target = root / f"zstd_row{i}"
        shutil.copytree(base, target)
        with sqlite3.connect(target / file.name) as con:
            rows = con.execute("SELECT id, data FROM messages").fetchall()
            row, data = rows[int(rng.integers(len(rows)))]
            con.execute("UPDATE messages SET data = ? WHERE id = ?", (flip(rng, data, (0, len(data)), 3), row))
        con.close()
        variants.append((f"zstd_row{i}", target))
    return variants


def read_variants(variants: list[tuple[str, Path]], counts: Counter) -> tuple[list[str], set[str]]:
    """Read each variant with ``read_episode_bag``; count the outcomes; return (what broke the contract,
    the names of the variants refused with a BagError)."""
    failures, refused = [], set()
    for name, path in variants:
        before = file_hash(path)
        try:
            with no_hang(20, f"reading {name}"):
                bagio.read_episode_bag(path)
            counts["read (damage not in a decoded field)"] += 1
        except BagError as exc:
            counts["BagError"] += 1
            refused.add(name)
            if len(str(exc).splitlines()) != 1 or not str(exc).startswith(str(path)):
                failures.append(f"{name}: not one line naming the bag: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        if file_hash(path) != before:
            failures.append(f"{name}: the bag changed")
    counts["variants"] = sum(v for k, v in counts.items() if k != "variants")
    return failures, refused


def test_fuzz_bags_into_the_reader(tmp_path: Path) -> None:
    counts = FUZZ_COUNTS["bags -> reader"] = Counter()
    failures, _ = read_variants(mutated_bags(tmp_path), counts)
    assert not failures, "\n".join(failures)
    assert counts["BagError"] >= 30, counts


def test_fuzz_compressed_bags_into_the_reader(tmp_path: Path) -> None:
    """zstd/lz4 mcap and zstd sqlite3: a damaged compressed chunk is a one-line BagError naming the bag
    (a ZstdError escaped replay before), whatever the decompressor raises."""
    counts = FUZZ_COUNTS["compressed bags (zstd/lz4 mcap, zstd sqlite3) -> reader"] = Counter()
    failures, refused = read_variants(mutated_compressed_bags(tmp_path), counts)
    assert not failures, "\n".join(failures)
    for codec in ("zstd", "lz4"):
        counts[f"{codec} chunk flips refused"] = sum(name.startswith(f"{codec}_chunkflip") for name in refused)
    assert counts["BagError"] >= 40 and counts["zstd chunk flips refused"] >= 10, counts


def _run_cli(capsys: pytest.CaptureFixture, argv: list[str], what: str) -> tuple[int, str]:
    with no_hang(60, what):
        code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_fuzz_bags_into_replay_and_train(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    counts = FUZZ_COUNTS["bags (plain, zstd/lz4 chunks) -> replay/train CLI"] = Counter()
    failures = []
    config = tmp_path / "tiny.yaml"
    config.write_text("policy: {hidden_dim: 16, num_layers: 1, horizon: 8, solver_steps: 2}\ntrain: {steps: 2, batch_size: 8}\n")
    variants = mutated_bags(tmp_path / "bags", seed=1)
    picked = [variants[i] for i in np.random.default_rng(2).choice(len(variants), 16, replace=False)]
    compressed = mutated_compressed_bags(tmp_path / "compressed_bags", seed=1)
    chunk_flips = [v for v in compressed if "chunkflip" in v[0]]  # the damage that escaped replay as ZstdError
    picked += [chunk_flips[i] for i in np.random.default_rng(3).choice(len(chunk_flips), 8, replace=False)]
    for k, (name, path) in enumerate(picked):
        before = file_hash(path)
        runs = [("replay", ["replay", str(path), "--model", str(tiny_model), "--out", str(tmp_path / f"replay_{name}"),
                            "--no-plots", "--write-bag"])]
        if k % 2 == 0:  # train is slower: every other variant, each in a dataset directory of its own
            data = tmp_path / f"data_{name}"
            shutil.copytree(path, data / "ep")
            runs.append(("train", ["train", str(data), "--config", str(config), "--out", str(tmp_path / f"train_{name}"),
                                   "--no-progress"]))
        for verb, argv in runs:
            try:
                code, err = _run_cli(capsys, argv, f"{verb} on {name}")
            except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
                failures.append(f"{verb} {name}: {type(exc).__name__}: {exc}")
                continue
            errors = [line for line in err.splitlines() if f"flow-policy {verb}: error" in line]
            if code == 0:
                counts[f"{verb} ran"] += 1
            elif code == 2 and len(errors) == 1 and "Traceback" not in err:
                counts[f"{verb} exit 2, one line"] += 1
            else:
                failures.append(f"{verb} {name}: exit {code}, stderr {err[-500:]!r}")
        if file_hash(path) != before:
            failures.append(f"{name}: the bag changed")
    assert not failures, "\n".join(failures)
    assert counts["replay exit 2, one line"] >= 8, counts


# --------------------------------------------------------------------------- 3. DDS


def hostile_messages(rng: np.random.Generator, count: int) -> Iterator[tuple[str, str, bytes]]:
    """(topic, kind, CDR bytes): random bytes, flipped valid messages, non-UTF-8 names, random-field messages,
    and good joint states in between (a third of them) so the node keeps running."""
    ts = bagio.TYPESTORE
    home = np.array([0.0, 0.3, 0.0, -1.2, 0.0, 0.9, 0.0])
    good_js = lambda q: bytes(ts.serialize_cdr(bagio.joint_state_msg(time.time_ns(), NAMES, q, np.zeros(7)), bagio.JOINT_STATE))  # noqa: E731
    good_goal = bytes(ts.serialize_cdr(bagio.point_stamped_msg(time.time_ns(), np.array([0.5, 0.1, 0.4])), bagio.POINT_STAMPED))

    def flipped(data: bytes, flips: int) -> bytes:
        out = bytearray(data)
        for _ in range(flips):
            out[int(rng.integers(4, len(out)))] = int(rng.integers(0, 256))
        return bytes(out)

    for i in range(count):
        kind = int(rng.integers(0, 9))
        if i % 3 == 0 or kind == 0:
            yield "joint_states", "good joint state", good_js(home + rng.normal(0, 0.02, 7))
        elif kind == 1:
            body = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
            yield "joint_states", "random bytes", (b"\x00\x01\x00\x00" if rng.random() < 0.7 else b"") + body
        elif kind == 2:
            yield "joint_states", "flipped joint state", flipped(good_js(home), int(rng.integers(1, 6)))
        elif kind == 3:
            data = bytearray(good_js(home))
            j = data.find(b"lbr_iiwa_joint_" + str(int(rng.integers(1, 8))).encode())
            data[j:j + 4] = b"\xff\xfe\xfd\xfc"
            yield "joint_states", "non-UTF-8 name", bytes(data)
        elif kind == 4:
            size = int(rng.integers(0, 10))
            names = [NAMES[int(j)] if rng.random() < 0.8 else f"joint_{int(j)}" for j in rng.integers(0, 7, size)]
            values = rng.choice([np.nan, np.inf, -np.inf, 1e300, -1e300, 3.5, -7.0, 0.1], int(rng.integers(0, 10)))
            msg = bagio.joint_state_msg(int(rng.integers(0, 2**60)), names, values, rng.normal(size=int(rng.integers(0, 10))))
            yield "joint_states", "random-field joint state", bytes(ts.serialize_cdr(msg, bagio.JOINT_STATE))
        elif kind == 5:
            body = rng.integers(0, 256, int(rng.integers(0, 60)), dtype=np.uint8).tobytes()
            yield "goal", "random bytes", b"\x00\x01\x00\x00" + body
        elif kind == 6:
            yield "goal", "flipped goal", flipped(good_goal, int(rng.integers(1, 4)))
        elif kind == 7:
            point = rng.choice([np.nan, np.inf, 1e6, -50.0, 0.5, 0.1], 3)
            frame = str(rng.choice(["world", "", "base_link", "wörld"]))
            msg = bagio.point_stamped_msg(int(rng.integers(0, 2**60)), point, frame)
            yield "goal", "random-field goal", bytes(ts.serialize_cdr(msg, bagio.POINT_STAMPED))
        else:
            yield "goal", "good goal", good_goal


class Fuzzer(SpinningNode):
    """An rclpy node in this process that publishes raw CDR bytes and records the node's commands."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        super().__init__("fuzzer")
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.publishers = {"joint_states": self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data),
                           "goal": self.node.create_publisher(PointStamped, "goal", latched)}
        self.commands: list[np.ndarray] = []
        self.diagnostics: list[dict[str, str]] = []
        self.node.create_subscription(Float64MultiArray, "commands", self._on_command, QoSProfile(depth=50))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.start_spinning()

    def _on_command(self, msg: object) -> None:
        with self.lock:
            self.commands.append(np.array(msg.data))  # type: ignore[attr-defined]

    def _on_diagnostics(self, msg: object) -> None:
        for status in msg.status:  # type: ignore[attr-defined]
            if status.name.endswith(": policy"):
                with self.lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})



@pytest.mark.slow
def test_fuzz_raw_cdr_onto_the_node(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import start_policy_node, stop_process

    counts = FUZZ_COUNTS["raw CDR -> policy_node"] = Counter()
    fuzzer = Fuzzer()
    log = tmp_path / "policy_node.log"
    proc = start_policy_node(log, params={"model_path": str(tiny_model), "providers": ["CPUExecutionProvider"],
                                          "warmup": 1, "stale_timeout_s": 0.2})
    try:
        fuzzer.publishers["goal"].publish(bytes(bagio.TYPESTORE.serialize_cdr(
            bagio.point_stamped_msg(0, np.array([0.5, 0.1, 0.4])), bagio.POINT_STAMPED)))
        good = bytes(bagio.TYPESTORE.serialize_cdr(bagio.joint_state_msg(0, NAMES, np.zeros(7), np.zeros(7)), bagio.JOINT_STATE))
        deadline = time.monotonic() + 20.0
        while not fuzzer.commands and time.monotonic() < deadline:
            fuzzer.publishers["joint_states"].publish(good)
            time.sleep(0.01)
        assert fuzzer.commands, "the node never commanded on good joint states"
        for topic, kind, data in hostile_messages(np.random.default_rng(0), 1500):
            fuzzer.publishers[topic].publish(data)
            counts[f"{topic}: {kind}"] += 1
            time.sleep(0.003)
        assert proc.poll() is None, "policy_node died under fuzzing"
        fuzzer.wait_for(lambda: bool(fuzzer.diagnostics), 3.0, "diagnostics")
    finally:
        stop_process(proc)
        fuzzer.close()
    text = log.read_text(errors="replace")
    with fuzzer.lock:
        commands = np.array(fuzzer.commands)
        diag = fuzzer.diagnostics[-1]
    counts["commands received"] = len(commands)
    counts["rejected_messages (node)"] = int(diag["rejected_messages"])
    counts["rejected_goals (node)"] = int(diag["rejected_goals"])
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert len(commands) > 100 and np.all(np.isfinite(commands))
    assert np.all(commands >= np.array(IIWA_POSITION_LOWER) - 1e-12) and np.all(commands <= np.array(IIWA_POSITION_UPPER) + 1e-12)
    assert np.all(np.abs(np.diff(commands, axis=0)) <= np.array(IIWA_VELOCITY_LIMIT) * 0.02 + 1e-9)
    assert counts["rejected_messages (node)"] > 50 and counts["rejected_goals (node)"] > 10, counts
