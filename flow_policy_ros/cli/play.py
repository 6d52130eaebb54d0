"""``flow-policy play``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.data.play`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.data.play import (
    BagPlayer,
    load_messages,
    release_offsets,
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 directory (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)")
    parser.add_argument("--topics", nargs="+", help="play only these topics (default: all); to drive a live "
                        "policy_node leave its output out, e.g. --topics /joint_states /goal")
    parser.add_argument("--loop", action="store_true", help="restart at the end until interrupted")
    parser.add_argument("--clock", action="store_true", help="publish /clock (rosgraph_msgs/Clock) with the bag time; "
                        "nodes follow it only with use_sim_time:=true")
    parser.add_argument("--clock-rate", type=float, default=100.0, help="/clock publish rate (Hz)")
    parser.add_argument("--start-offset", type=float, default=0.0, help="skip the first S seconds of the bag")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds until each played topic (not /clock) has a subscriber; "
                        "the topics waited for are printed")
    parser.add_argument("--delay", type=float, default=0.5, help="then wait S seconds before the first message (discovery)")
    parser.add_argument("--json", type=Path, help="write playback statistics here")


def run(args: argparse.Namespace) -> int:
    if args.clock_rate <= 0:
        raise CliError(f"--clock-rate must be > 0 Hz, got {args.clock_rate}")
    if args.delay < 0:
        raise CliError(f"--delay must be >= 0 s, got {args.delay}")
    release_offsets(np.zeros(1, np.int64), args.rate, args.start_offset)  # validates rate and offset
    messages = load_messages(args.bag, args.topics)
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # Python's own SIGINT handling: Ctrl+C raises KeyboardInterrupt here and the finally cleans up.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = None
    loops = 0
    stats: dict[str, float] = {}
    try:
        node = rclpy.create_node("flow_policy_play")
        player = BagPlayer(node, messages, args.clock, args.clock_rate)
        if args.wait_for_subscribers > 0:
            print(f"play: waiting up to {args.wait_for_subscribers:g} s for subscribers on {', '.join(sorted(player.publishers))}",
                  flush=True)
            missing = player.wait_for_subscribers(args.wait_for_subscribers)
            if missing:
                node.get_logger().warning(f"no subscriber on {', '.join(missing)} after {args.wait_for_subscribers:g} s; "
                                          "playing anyway")
        time.sleep(args.delay)
        while True:
            stats = player.play_once(args.rate, args.start_offset)
            loops += 1
            if not args.loop:
                break
        time.sleep(0.2)  # let reliable transports deliver the tail before tearing down
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    topics = sorted({m.topic for m in messages})
    print(f"play: {stats.get('published', 0)} messages on {len(topics)} topic(s) x{loops}, "
          f"lateness p50 {stats.get('lateness_ms_p50', 0):.2f} ms, max {stats.get('lateness_ms_max', 0):.2f} ms")
    write_json(args.json, {"bag": str(args.bag), "topics": topics, "loops": loops, "rate": args.rate, **stats})
    return 0
