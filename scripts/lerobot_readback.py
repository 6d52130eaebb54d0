"""Check our LeRobotDataset v3.0 files against LeRobot's own code (issue 20, item 4), both ways.

LeRobot 0.6.1 needs Python >= 3.12 and this machine has 3.11; it imports on 3.11 once its PEP 695
syntax (``type X = ...``, ``class C[T]``, ``def f[T]``) is rewritten. This script does that in an
import hook, on the source text as it is loaded: the installed files are not modified, so a fresh
install needs no patch step. Set up a separate venv (never the project's; torch pinned first,
from local disk):

    python3.11 -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install torch==2.13.0
    /tmp/lerobot-venv/bin/pip install --no-deps --ignore-requires-python lerobot==0.6.1
    /tmp/lerobot-venv/bin/pip install datasets pandas pyarrow==26.0.1 huggingface_hub packaging av \
        draccus einops jsonlines pillow termcolor deepdiff imageio

Steps (``write``/``ours-read`` in the project's venv, ``read``/``lerobot-write`` in LeRobot's; ``--video``
adds a 64 x 64 camera ``observation.images.front``, AV1 video):

    .venv/bin/python scripts/lerobot_readback.py write  OUT/ours [--video]   # bags -> flow-policy's v3 writer
    /tmp/lerobot-venv/bin/python scripts/lerobot_readback.py read OUT/ours   # LeRobotDataset reads ours
    /tmp/lerobot-venv/bin/python scripts/lerobot_readback.py read DATASET --converted   # ... or one from recorded bags
    /tmp/lerobot-venv/bin/python scripts/lerobot_readback.py lerobot-write OUT/theirs [--video]  # LeRobot writes one
    .venv/bin/python scripts/lerobot_readback.py ours-read OUT/theirs  # our reader + converter read theirs

``read`` compares every frame LeRobot returns (observation.state, action, timestamp, indices,
task text, and each camera image: LeRobot's decoded frame k against ours, exactly, and against the
image written at k) with our reader's, the episode ranges and the stats. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]


# --------------------------------------------------------------------------- PEP 695 on Python 3.11

_TYPE_ALIAS = re.compile(r"^(\s*)type (\w+) = ", re.M)
_GENERIC_CLASS = re.compile(r"^(\s*)class (\w+)\[([^\]]+)\]\(([^)]*)\):", re.M)
_GENERIC_CLASS_NO_BASE = re.compile(r"^(\s*)class (\w+)\[([^\]]+)\]:", re.M)
_GENERIC_DEF = re.compile(r"^(\s*)def (\w+)\[([^\]]+)\]\(", re.M)


def rewrite_pep695(source: str) -> str:
    """PEP 695 syntax → Python 3.11 (aliases become assignments, type parameters module TypeVars)."""
    params: list[str] = []

    def names(group: str) -> list[str]:
        return [p.split(":")[0].strip().lstrip("*") for p in group.split(",") if p.strip()]

    def cls(m: re.Match[str]) -> str:
        ps = names(m.group(3))
        params.extend(ps)
        bases = f"{m.group(4)}, " if m.group(4).strip() else ""
        return f"{m.group(1)}class {m.group(2)}({bases}typing.Generic[{', '.join(ps)}]):"

    def cls_no_base(m: re.Match[str]) -> str:
        ps = names(m.group(3))
        params.extend(ps)
        return f"{m.group(1)}class {m.group(2)}(typing.Generic[{', '.join(ps)}]):"

    def fn(m: re.Match[str]) -> str:
        params.extend(names(m.group(3)))
        return f"{m.group(1)}def {m.group(2)}("

    out = _TYPE_ALIAS.sub(r"\1\2 = ", source)
    out = _GENERIC_CLASS.sub(cls, out)
    out = _GENERIC_CLASS_NO_BASE.sub(cls_no_base, out)
    out = _GENERIC_DEF.sub(fn, out)
    if out == source:
        return source
    header = "import typing\n" + "".join(f"{p} = typing.TypeVar({p!r})\n" for p in dict.fromkeys(params))
    lines = out.splitlines(keepends=True)
    # after the docstring and __future__ imports: before the first other import
    at = next(i for i, line in enumerate(lines) if re.match(r"(import |from (?!__future__))", line))
    return "".join(lines[:at]) + header + "".join(lines[at:])


class _Pep695Loader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):  # type: ignore[override]
        return compile(rewrite_pep695(data.decode("utf-8")), path, "exec", dont_inherit=True, optimize=_optimize)


class _Pep695Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if not fullname.startswith("lerobot"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            spec.loader = _Pep695Loader(fullname, spec.origin)
        return spec


def _import_torchvision_without_ops() -> None:
    """Import torchvision when its C++ ops do not load (the PyPI wheel is a CUDA build, torch the CPU one).

    torchvision registers fake kernels for ``torchvision::nms`` and ``qnms`` whether or not its
    ops library loaded, and that raises; while it imports, such a registration for an op that
    does not exist is skipped. The dataset code needs none of the ops (parquet frames; video
    decoding goes through PyAV).
    """
    import torch

    real = torch.library.register_fake

    def skip_missing(op, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(op, str) and op.startswith("torchvision::"):
            try:
                getattr(torch.ops.torchvision, op.split("::")[1])
            except (AttributeError, RuntimeError):
                return args[0] if args else (lambda fn: fn)
        return real(op, *args, **kwargs)

    torch.library.register_fake = skip_missing
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = real


def import_lerobot():  # type: ignore[no-untyped-def]
    """LeRobot's LeRobotDataset class, importable on Python 3.11 beside the CPU torch."""
    if sys.version_info < (3, 12):
        sys.meta_path.insert(0, _Pep695Finder())
        sys.dont_write_bytecode = True  # never cache the rewritten code as the file's own
    _import_torchvision_without_ops()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


# --------------------------------------------------------------------------- steps


def write_ours(out: Path, video: bool = False) -> None:
    """Three synthetic episode bags (50 Hz, goal, Float64MultiArray commands; ``video``: a 64 x 64 camera
    /camera/front/image_raw at 50 Hz showing :func:`test_image`) → our v3 writer."""
    import tempfile

    from flow_policy_ros.data import bag as bagio
    from flow_policy_ros.data.images import ImageSeries
    from flow_policy_ros.data.lerobot_convert import LeRobotMapping, bags_to_lerobot
    from flow_policy_ros.data.recording import EpisodeRecording

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        bags = []
        for e in range(3):
            n = 40 + 10 * e
            ticks = 1_700_000_000_000_000_000 + 20_000_000 * np.arange(n, dtype=np.int64)
            pos = np.cumsum(rng.normal(scale=0.01, size=(n, 7)), axis=0)
            images = {"front": ImageSeries("front_optical_frame", ticks, np.stack([camera_test_image(k + 100 * e) for k in range(n)]))}
            rec = EpisodeRecording(list(NAMES), ticks, pos, np.zeros((n, 7)), ticks[:1], rng.normal(size=(1, 3)),
                                   list(NAMES), ticks, pos + 0.01, {"task": ["reach the goal", "reach around"][e % 2]},
                                   images=images if video else {})
            bags.append(Path(tmp) / f"ep{e}")
            bagio.write_episode_bag(bags[-1], rec)
        summary = bags_to_lerobot(bags, out, LeRobotMapping(observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]}))
    print(f"wrote {out}: {summary['episodes']} episodes, {summary['frames']} frames")


def read_with_lerobot(root: Path, test_images: bool = True) -> int:
    """LeRobot's LeRobotDataset on our files, compared frame by frame with our reader."""
    LeRobotDataset = import_lerobot()
    import lerobot

    from flow_policy_ros.data.lerobot_reader import read_dataset

    ours = read_dataset(root)
    ds = LeRobotDataset("local/flow_policy_ros_check", root=root)
    problems: list[str] = []
    print(f"lerobot {lerobot.__version__}: LeRobotDataset loaded {root}: {ds.num_episodes} episodes, {ds.num_frames} frames, "
          f"fps {ds.fps}, features {list(ds.features)}")
    if (ds.num_episodes, ds.num_frames, ds.fps) != (len(ours.episodes), ours.info["total_frames"], ours.fps):
        problems.append("episode/frame counts or fps differ")
    i = 0
    for ep in ours.iter_episodes():
        meta = ds.meta.episodes[ep.episode_index]
        if (meta["dataset_from_index"], meta["dataset_to_index"]) != (i, i + ep.length):
            problems.append(f"episode {ep.episode_index}: range {meta['dataset_from_index']}..{meta['dataset_to_index']}")
        for k in range(ep.length):
            item = ds[i + k]
            for name in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"):
                theirs = item[name].numpy()
                if not np.array_equal(theirs.reshape(-1), np.asarray(ep.columns[name][k]).reshape(-1)):
                    problems.append(f"frame {i + k} feature {name}: {theirs} != {ep.columns[name][k]}")
            if item["task"] != ep.task:
                problems.append(f"frame {i + k} task {item['task']!r} != {ep.task!r}")
        i += ep.length
    for feature, stats in ours.stats.items():
        for key, value in stats.items():
            theirs = np.asarray(ds.meta.stats[feature][key])
            if not np.allclose(theirs.reshape(-1), np.asarray(value, float).reshape(-1), rtol=0, atol=1e-12):
                problems.append(f"stats {feature}/{key} differ")
    print(f"compared {i} frames x 7 features + task text, {sum(len(s) for s in ours.stats.values())} stats arrays, "
          f"{len(ours.episodes)} episode ranges: {len(problems)} mismatch(es)")
    print(f"frame 0 from LeRobot: state {ds[0]['observation.state'][:3].tolist()}..., action {ds[0]['action'][:3].tolist()}..., "
          f"task {ds[0]['task']!r}")
    for key in ours.video_keys:
        worst_decode, errors, i = 0.0, [], 0
        for ep in ours.episodes:
            frames = ours.episode_frames(int(ep["episode_index"]), key)
            for k in range(len(frames)):
                theirs = ds[i + k][key].numpy()  # (3, H, W) float32 in [0, 1], decoded by LeRobot (PyAV)
                worst_decode = max(worst_decode, float(np.abs(theirs - frames[k].transpose(2, 0, 1) / 255.0).max()))
                if test_images:  # the dataset of `write --video`: compare with the image written at k
                    written = camera_test_image(k + 100 * int(ep["episode_index"])).transpose(2, 0, 1).astype(np.float64)
                    errors.append(float(np.abs(theirs * 255.0 - written).mean()))
            i += len(frames)
        if worst_decode > 1e-6:
            problems.append(f"{key}: LeRobot's frames differ from ours by up to {worst_decode}")
        written = (f"mean |LeRobot's frame k - image written at k| per frame: {np.mean(errors):.2f} "
                   f"(max {np.max(errors):.2f}) grey levels; ") if errors else ""
        print(f"{key}: {i} frames from LeRobot's decoder; largest |LeRobot - ours| {worst_decode:.1e}; {written}"
              f"info {ds.meta.features[key]['info']['video.codec']} {ds.meta.features[key]['info']['video.pix_fmt']}")
    for p in problems[:20]:
        print("  MISMATCH", p)
    return 1 if problems else 0


def camera_test_image(k: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Frame k of the test camera: smooth colour gradients that move with k (H, W, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = 2 * np.pi * k / 40
    r = 128 + 100 * np.sin(2 * np.pi * x / width + phase)
    g = 128 + 100 * np.cos(2 * np.pi * y / height - phase)
    b = np.full_like(x, (40 + 4 * k) % 256)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def lerobot_write(out: Path, video: bool = False) -> None:
    """A small dataset written by LeRobot's own LeRobotDataset.create / add_frame / save_episode
    (``video``: plus a 64 x 64 camera ``observation.images.front``, AV1 as LeRobot encodes it)."""
    LeRobotDataset = import_lerobot()
    import lerobot

    state_names = NAMES + ["goal.x", "goal.y", "goal.z"] if not video else [f"{n}.pos" for n in NAMES] + ["goal.x", "goal.y", "goal.z"]
    features = {"observation.state": {"dtype": "float32", "shape": (10,), "names": state_names},
                "action": {"dtype": "float32", "shape": (7,), "names": NAMES}}
    if video:
        features["observation.images.front"] = {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create("local/lerobot_written", fps=50, features=features, root=out, robot_type="kuka_iiwa",
                               use_videos=video)
    rng = np.random.default_rng(1)
    for e in range(2):
        goal = rng.normal(size=3).astype(np.float32)
        for k in range(25 + 5 * e):
            state = np.concatenate([rng.normal(size=7).astype(np.float32), goal])
            frame = {"observation.state": state, "action": rng.normal(size=7).astype(np.float32), "task": f"lerobot task {e}"}
            if video:
                frame["observation.images.front"] = camera_test_image(k + 100 * e)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    print(f"lerobot {lerobot.__version__} wrote {out}: {ds.num_episodes} episodes, {ds.num_frames} frames")


def ours_read(root: Path) -> int:
    """Our reader and the --to-rosbag2 converter on a dataset LeRobot wrote."""
    import tempfile

    from flow_policy_ros.data.lerobot import aggregate_stats, episode_stats
    from flow_policy_ros.data.lerobot_convert import LeRobotMapping, bag_frames, lerobot_to_bags
    from flow_policy_ros.data.lerobot_reader import read_dataset

    ds = read_dataset(root)
    eps = list(ds.iter_episodes())
    print(f"our reader: {len(eps)} episodes, {sum(e.length for e in eps)} frames, tasks {ds.tasks}, "
          f"stats keys {sorted(ds.stats['action'])}")
    worst = {}
    for name in ("observation.state", "action", "timestamp", "frame_index", "index"):
        ours = aggregate_stats([episode_stats(e.columns[name]) for e in eps])
        for key, value in ours.items():
            diff = float(np.abs(np.asarray(ds.stats[name][key], float).reshape(-1) - value.reshape(-1)).max())
            worst[key] = max(worst.get(key, 0.0), diff)
    print("our stats of LeRobot's frames vs its stats.json, largest |difference| per stat: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    bad_images = False
    for key in ds.video_keys:
        from flow_policy_ros.data.lerobot import aggregate_stats as agg
        from flow_policy_ros.data.lerobot import image_episode_stats

        decoded = [ds.episode_frames(e.episode_index, key) for e in eps]
        errors = [float(np.abs(f[k].astype(float) - camera_test_image(k + 100 * e.episode_index)).mean())
                  for f, e in zip(decoded, eps) for k in range(len(f))]
        print(f"{key}: our decoder on LeRobot's {ds.features[key]['info']['video.codec']} video: {sum(map(len, decoded))} "
              f"frames, mean |frame k - image LeRobot was given at k| {np.mean(errors):.2f} (max {np.max(errors):.2f}) grey levels")
        written = [np.stack([camera_test_image(k + 100 * e.episode_index) for k in range(e.length)]) for e in eps]
        ours = agg([image_episode_stats(w) for w in written])
        image_worst = max(float(np.abs(np.asarray(ds.stats[key][k], float).reshape(-1) - v.reshape(-1)).max())
                          for k, v in ours.items())
        # LeRobot accumulates uint8 pixels in float32 (std, and the histogram edges the quantiles are read from)
        print(f"{key}: our image stats of the frames LeRobot was given vs its stats.json: largest |difference| "
              f"{image_worst:.1e} (of 1 = 255 grey levels; allowed 1e-3)")
        bad_images = image_worst > 1e-3
    mapping = LeRobotMapping(observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]})
    with tempfile.TemporaryDirectory() as tmp:
        bags = lerobot_to_bags(root, Path(tmp) / "bags", mapping)
        bad = 0
        for bag, ep in zip(bags, eps):
            frames = bag_frames(bag, mapping)
            bad += not np.array_equal(frames.state.astype(np.float32), ep.columns["observation.state"])
            bad += not np.array_equal(frames.action.astype(np.float32), ep.columns["action"])
            for camera, images in frames.images.items():
                bad += not np.array_equal(images, ds.episode_frames(ep.episode_index, "observation.images." + camera))
    print(f"--to-rosbag2 wrote {len(bags)} bags; read back onto the same frames (images: the decoded ones): "
          f"{len(bags) - bad}/{len(bags)} exact")
    return 1 if bad or bad_images or max(worst.values()) > 1e-5 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["write", "read", "lerobot-write", "ours-read"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--video", action="store_true", help="with a camera feature (observation.images.front, video)")
    parser.add_argument("--converted", action="store_true",
                        help="read: a dataset converted from recorded bags (its images are not the script's test images)")
    args = parser.parse_args()
    if args.step == "write":
        write_ours(args.path, video=args.video)
    elif args.step == "read":
        return read_with_lerobot(args.path, test_images=not args.converted)
    elif args.step == "lerobot-write":
        lerobot_write(args.path, video=args.video)
    else:
        return ours_read(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
