"""The execution settings: how a loaded policy is run, written once for every surface.

Each setting is one field of :class:`ExecutionSettings`: its name and type are the field's, its
default, range, choices and one-line doc are in the field's :class:`Setting` (``dataclasses``
metadata). Everything else is derived from that one table:

* ``policy_node``'s ROS parameters and their descriptors (``ros/policy_parameters.py`` adds the
  ROS-specific ones: model path, providers, executor, ...);
* the in-process closed loop's config (``sim.closed_loop.LoopConfig`` is this class);
* the command-line flags of ``flow-policy eval-sim`` / ``demo`` (:func:`add_setting_flags`,
  :func:`settings_from_args`);
* the :class:`~flow_policy_ros.runtime.controller.ControllerConfig` of a model
  (:func:`controller_config`: the settings plus the model's metadata).

A setting with ``in_process=False`` means nothing to the synchronous in-process loop (it runs
stream mode, its goals carry no frame, its joint states are never late): the node declares it,
``eval-sim`` offers no flag for it. Pure: no rclpy, no argparse state beyond the parser passed in.
Units: s, ms, rad/s, ticks.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from flow_policy_ros.runtime.chunking import CHUNKING_CHOICES, DEFAULT_ENSEMBLE_DECAY, DEFAULT_REPLAN_EVERY, resolve_chunking
from flow_policy_ros.runtime.controller import EXECUTION_MODES, ControllerConfig
from flow_policy_ros.runtime.controller_config import DEFAULT_RTC_BLEND_TICKS, DEFAULT_RTC_MIN_PREFIX
from flow_policy_ros.runtime.metadata import DEFAULT_OUTPUT_MARGIN, PolicyMetadata
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN
from flow_policy_ros.runtime.safety import GUIDANCE_SCALE_BOUNDS, validate_guidance_scale


@dataclass(frozen=True)
class Setting:
    """What the table says about one setting besides its name and type (those are the field's).

    Attributes:
        doc: one line, with units (the ROS parameter description and the flag's help).
        low, high: inclusive range of a number (None = unbounded).
        choices: the allowed strings of a string setting.
        read_only: False when the node lets it change at run time (``ros2 param set``).
        in_process: the in-process loop honours it (``eval-sim`` offers a flag).
        flag_aliases: older spellings of the command-line flag that still parse.
    """

    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = True
    in_process: bool = True
    flag_aliases: tuple[str, ...] = ()


def _setting(default: Any, doc: str, **kwargs: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Setting` in the field's metadata."""
    return field(default=default, metadata={"setting": Setting(doc, **kwargs)})


@dataclass(frozen=True)
class ExecutionSettings:
    """How a policy is executed; one field per setting (see the module docstring).

    The defaults are ``policy_node``'s parameter defaults and ``eval-sim``'s flag defaults.
    """

    execution: str = _setting("stream", "'stream': one Float64MultiArray per tick on commands; 'trajectory': one "
                              "JointTrajectory per chunk on joint_trajectory", choices=EXECUTION_MODES, in_process=False)
    chunking: str = _setting("auto", "'auto' (rtc for a real-time chunking model, metadata rtc, else receding_horizon), "
                             "'receding_horizon' (open loop), 'temporal_ensemble' (ACT-style averaging) or 'rtc' "
                             "(real-time chunking: needs a model trained with a committed prefix)", choices=CHUNKING_CHOICES)
    replan_every: int = _setting(DEFAULT_REPLAN_EVERY, "actions executed from a chunk before the next chunk is due "
                                 "(ticks, <= horizon H)", low=1, high=1000)
    ensemble_decay: float = _setting(DEFAULT_ENSEMBLE_DECAY, "temporal ensembling m in w = exp(-m * chunk start tick); "
                                     "> 0 favours older chunks", low=-1.0, high=1.0)
    guidance_scale: float | None = _setting(None, "classifier-free guidance weight w (1 = conditional); unset = the "
                                            "model's (metadata guidance_scale); the node's may change at run time",
                                            low=GUIDANCE_SCALE_BOUNDS[0], high=GUIDANCE_SCALE_BOUNDS[1],
                                            read_only=False, flag_aliases=("--guidance",))
    stale_timeout_s: float = _setting(0.1, "joint states older than this (s, by receipt time) stop new commands",
                                      low=0.001, high=10.0, in_process=False)
    max_velocity_scale: float = _setting(1.0, "factor (0, 1] on the model's joint velocity limits (rad/s)",
                                         low=0.01, high=1.0)
    ood_margin: float = _setting(DEFAULT_OOD_MARGIN, "out-of-distribution guard: hold when an observation lies more "
                                 "than this many training-range widths outside the model's training range (WARN beyond "
                                 "half of it); goals beyond it are rejected", low=0.0, high=100.0)
    output_margin: float = _setting(DEFAULT_OUTPUT_MARGIN, "output range guard: a chunk with an action more than this "
                                    "many training-action-range widths outside the model's action range (metadata "
                                    "action_range) is an invalid output (hold); off for models without the range",
                                    low=0.0, high=100.0)
    goal_frame: str = _setting("world", "frame_id a goal must carry; goals in other frames are rejected", in_process=False)
    rtc_margin_ticks: int = _setting(1, "chunking rtc: ticks added to the measured inference delay to size the "
                                     "committed prefix", low=0, high=100)
    rtc_min_prefix: int = _setting(DEFAULT_RTC_MIN_PREFIX, "chunking rtc: the shortest committed prefix (ticks, "
                                   "clipped to the model's d_max) whatever the delay, so that each new chunk continues "
                                   "the executing one's velocity", low=1, high=100)
    rtc_blend_ticks: int = _setting(DEFAULT_RTC_BLEND_TICKS, "chunking rtc: actions after the committed prefix "
                                    "blended linearly from the executing chunk into the new one (ticks; 0 = none)",
                                    low=0, high=100)
    density_hold_after: int = _setting(2, "observation density guard (models with metadata density): hold after this "
                                       "many decisions in a row score below the calibrated log-likelihood threshold; "
                                       "resume after as many in a row at or above it", low=1, high=100)
    inject_delay_ms: float = _setting(0.0, "FOR EXPERIMENTS ONLY: each chunk becomes available this long (ms) after its "
                                      "request, to emulate a slow model (the real-time chunking delay protocol); "
                                      "0 on a robot", low=0.0, high=2000.0)

    def __post_init__(self) -> None:
        for spec in settings_table():
            check_value(spec.name, getattr(self, spec.name))


@dataclass(frozen=True)
class SettingSpec:
    """One row of the table: the field's name, type and default with its :class:`Setting`."""

    name: str
    type: type
    default: Any
    setting: Setting

    @property
    def optional(self) -> bool:
        """The default is None ("unset": the model decides)."""
        return self.default is None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "float | None": float}


@functools.cache
def settings_table() -> tuple[SettingSpec, ...]:
    """Every execution setting, in declaration order."""
    rows = []
    for f in fields(ExecutionSettings):
        assert f.default is not MISSING and "setting" in f.metadata, f"{f.name}: every setting needs _setting(...)"
        rows.append(SettingSpec(f.name, _TYPES[str(f.type)], f.default, f.metadata["setting"]))
    return tuple(rows)


def check_value(name: str, value: Any) -> None:
    """Raise ValueError naming the setting unless ``value`` is of its type, in its range and choices."""
    spec = {s.name: s for s in settings_table()}[name]
    if value is None and spec.optional:
        return
    kind = spec.type
    ok_type = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        raise ValueError(f"setting {name} must be of type {kind.__name__}, got {value!r}")
    s = spec.setting
    if s.choices is not None and value not in s.choices:
        raise ValueError(f"setting {name} must be one of {s.choices}, got {value!r}")
    if kind in (int, float):
        if not math.isfinite(value):
            raise ValueError(f"setting {name} must be finite, got {value}")
        if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
            raise ValueError(f"setting {name} must be in [{s.low}, {s.high}], got {value}")


#: The table's defaults (immutable: safe as a default argument).
DEFAULT_SETTINGS = ExecutionSettings()


# --------------------------------------------------------------------------- derived: ControllerConfig


def controller_config(settings: ExecutionSettings, metadata: PolicyMetadata, period_s: float | None = None,
                      guidance_scale: float | None = None) -> ControllerConfig:
    """The PolicyController's configuration: ``settings`` with ``metadata``'s model.

    Args:
        settings: the execution settings ('auto' chunking is resolved here against ``metadata.rtc``).
        metadata: the model's observation spec, H, rtc d_max, training range, default w.
        period_s: control period (s); None = the model's (``metadata.control_period_s``).
        guidance_scale: the current w when it changed at run time; None = ``settings.guidance_scale``,
            and when that is unset too, the model's default.
    """
    w = settings.guidance_scale if guidance_scale is None else guidance_scale
    if w is None:
        w = getattr(metadata, "guidance_scale", None)
    return ControllerConfig(
        observation=metadata.observation,
        horizon=metadata.horizon,
        period_s=metadata.control_period_s if period_s is None else period_s,
        execution=settings.execution,
        chunking=resolve_chunking(settings.chunking, metadata.rtc),
        replan_every=settings.replan_every,
        ensemble_decay=settings.ensemble_decay,
        stale_timeout_s=settings.stale_timeout_s,
        guidance_scale=None if w is None else validate_guidance_scale(w),
        observation_range=getattr(metadata, "observation_range", None),
        ood_margin=settings.ood_margin,
        goal_frame=settings.goal_frame,
        rtc_max_delay=metadata.rtc_max_delay,
        rtc_margin_ticks=settings.rtc_margin_ticks,
        action_joint_names=tuple(getattr(metadata, "action_joint_names", ())),
        action_range=getattr(metadata, "action_range", None),
        output_margin=settings.output_margin,
        rtc_min_prefix=settings.rtc_min_prefix,
        rtc_blend_ticks=settings.rtc_blend_ticks,
        density_threshold=None if getattr(metadata, "density", None) is None else metadata.density.threshold,
        density_hold_after=settings.density_hold_after,
    )


# --------------------------------------------------------------------------- derived: command-line flags


def in_process_settings() -> tuple[str, ...]:
    """Names of the settings the in-process loop honours (``eval-sim``'s flags)."""
    return tuple(s.name for s in settings_table() if s.setting.in_process)


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add ``--<name-with-dashes>`` for each setting in ``names``, typed, with the table's default,
    choices and doc (ranges are checked by :func:`settings_from_args`)."""
    table = {s.name: s for s in settings_table()}
    for name in names:
        spec = table[name]
        s = spec.setting
        default_text = "unset" if spec.optional else f"{spec.default}"
        parser.add_argument(spec.flag, *s.flag_aliases, dest=name, type=spec.type, default=spec.default,
                            choices=s.choices, help=f"{s.doc} (default {default_text})")


def settings_from_args(args: argparse.Namespace, names: Iterable[str], base: ExecutionSettings | None = None,
                       **overrides: Any) -> ExecutionSettings:
    """``base`` (default: the table's defaults) with the flags of ``names`` from ``args`` and ``overrides``.

    Raises ValueError naming the setting when a value is outside the table's range or choices.
    """
    values = {name: getattr(args, name) for name in names}
    values.update(overrides)
    return replace(base or DEFAULT_SETTINGS, **values)
