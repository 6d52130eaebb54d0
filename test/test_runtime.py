"""OnnxPolicy: real ONNX Runtime sessions on real exported models; every refusal names the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_factory import make_tiny_model

from flow_policy_ros.errors import ModelFileError, ObservationError
from flow_policy_ros.runtime.metadata import METADATA_KEY
from flow_policy_ros.runtime.onnx_policy import CPU, OnnxPolicy, active_provider, choose_providers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("rt") / "tiny.onnx", seed=1)


def _rewrite_metadata(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    new = edit(props)
    for key, value in new.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def test_predict_shapes_units_and_determinism(model_path):
    policy = OnnxPolicy(model_path, providers=[CPU], seed=5)
    meta = policy.metadata
    obs = np.zeros(meta.obs_dim, np.float32)
    single = policy.predict(obs)
    assert single.shape == (meta.horizon, meta.action_dim) and single.dtype == np.float32
    batch = policy.predict(np.zeros((3, meta.obs_dim)))
    assert batch.shape == (3, meta.horizon, meta.action_dim)
    again = OnnxPolicy(model_path, providers=[CPU], seed=5)
    np.testing.assert_array_equal(again.predict(obs), single)  # same seed, same noise stream
    noise = np.ones((meta.horizon, meta.action_dim), np.float32)
    np.testing.assert_array_equal(policy.predict(obs, noise=noise), again.predict(obs, noise=noise))
    assert policy.metadata.model_hash and len(policy.metadata.model_hash) == 64


def test_guidance_scale_defaults_to_metadata_and_is_changeable(model_path):
    policy = OnnxPolicy(model_path, providers=[CPU])
    obs = np.full(policy.metadata.obs_dim, 0.3, np.float32)
    noise = policy.sample_noise()
    default = policy.predict(obs, noise)
    np.testing.assert_array_equal(default, policy.predict(obs, noise, guidance_scale=policy.metadata.guidance_scale))
    assert np.max(np.abs(default - policy.predict(obs, noise, guidance_scale=3.0))) > 1e-4


def test_observation_errors(model_path):
    policy = OnnxPolicy(model_path, providers=[CPU])
    dim = policy.metadata.obs_dim
    with pytest.raises(ObservationError, match=rf"expected \({dim},\)"):
        policy.predict(np.zeros(dim + 1))
    with pytest.raises(ObservationError, match="expected"):
        policy.predict(np.zeros((2, 2, dim)))
    bad = np.zeros(dim)
    bad[4] = np.nan
    with pytest.raises(ObservationError, match=r"NaN/inf at index \[4\]"):
        policy.predict(bad)
    bad[4] = np.inf
    with pytest.raises(ObservationError, match="NaN/inf"):
        policy.predict(bad)
    with pytest.raises(ObservationError, match="noise shape"):
        policy.predict(np.zeros(dim), noise=np.zeros((2, 2)))
    with pytest.raises(ObservationError, match="not finite"):
        policy.predict(np.zeros(dim), guidance_scale=float("nan"))


def test_file_errors(tmp_path, model_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        OnnxPolicy(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("this is not a protobuf")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        OnnxPolicy(tmp_path / "text.onnx")
    (tmp_path / "cut.onnx").write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        OnnxPolicy(tmp_path / "cut.onnx")


def test_metadata_errors(tmp_path, model_path):
    no_meta = _rewrite_metadata(model_path, tmp_path / "a.onnx", lambda p: {})
    with pytest.raises(ModelFileError, match="metadata key 'flow_policy' missing"):
        OnnxPolicy(no_meta)
    not_json = _rewrite_metadata(model_path, tmp_path / "b.onnx", lambda p: {METADATA_KEY: "{oops"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        OnnxPolicy(not_json)

    def edit(field, value):
        def apply(props):
            data = json.loads(props[METADATA_KEY])
            if value is None:
                del data[field]
            else:
                data[field] = value
            return {METADATA_KEY: json.dumps(data)}
        return apply

    cases = [
        ("horizon", None, r"lacks field\(s\) \['horizon'\]"),
        ("format_version", 99, "format_version 99"),
        ("action_dim", 6, "action_dim 6 but 7 action joints"),
        ("horizon", 5, r"input 'noise' has shape \[B, \[8, 7\]\] but the metadata says \[B, \[5, 7\]\]"),
        ("limits", {"lower": [0.0], "upper": [1.0], "velocity": [1.0]}, "limits cover 1 joints"),
        ("observation", {"joint_names": ["a"], "fields": ["teleport"]}, "unknown field 'teleport'"),
    ]
    for i, (field, value, message) in enumerate(cases):
        path = _rewrite_metadata(model_path, tmp_path / f"c{i}.onnx", edit(field, value))
        with pytest.raises(ModelFileError, match=message):
            OnnxPolicy(path)


def test_provider_preference_logic():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose_providers(None, gpu_build) == ["CUDAExecutionProvider", CPU]
    assert choose_providers(["CUDAExecutionProvider"], gpu_build) == ["CUDAExecutionProvider", CPU]
    assert choose_providers([CPU], gpu_build) == [CPU]
    assert choose_providers(None, [CPU]) == [CPU]  # a CPU-only build: CUDA silently absent, CPU chosen
    with pytest.raises(ModelFileError, match="none of the requested providers"):
        choose_providers(["NoSuchExecutionProvider"], gpu_build)
    # the session's active list decides, not the request
    assert active_provider(["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU]) == "CUDAExecutionProvider"
    assert active_provider([CPU], ["CUDAExecutionProvider", CPU]) == CPU


def test_cuda_requested_without_a_gpu_falls_back_to_cpu_visibly(model_path):
    """Real session on this GPU-less machine: onnxruntime-gpu lists CUDA as available, the
    session cannot use it, and the policy reports the CPU provider as active. On a machine
    with a working GPU the same call reports CUDAExecutionProvider (not testable here)."""
    import onnxruntime as ort

    policy = OnnxPolicy(model_path, providers=["CUDAExecutionProvider", CPU])
    assert policy.active_provider == policy.session.get_providers()[0]
    if "CUDAExecutionProvider" not in policy.session.get_providers():
        assert policy.active_provider == CPU
        assert "CUDAExecutionProvider requested but" in policy.fallback_reason
    else:
        assert policy.fallback_reason == ""
    assert "CUDAExecutionProvider" in policy.requested_providers or "CUDAExecutionProvider" not in ort.get_available_providers()


def test_runtime_imports_neither_torch_nor_pybullet(model_path):
    code = (
        "import sys, numpy as np\n"
        "from flow_policy_ros.runtime.onnx_policy import OnnxPolicy\n"
        f"p = OnnxPolicy({str(model_path)!r}, providers=['CPUExecutionProvider'])\n"
        "p.predict(np.zeros(p.metadata.obs_dim))\n"
        "print('torch' in sys.modules, 'pybullet' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"


# --------------------------------------------------------------------------- output validation


@pytest.mark.parametrize("kind, fragment", [
    ("nan", "NaN/inf value(s)"),
    ("short", "has shape (1, 4, 7), expected (1, 8, 7)"),
    ("declared_short", "declared with shape ['batch', 4, 'Addactions_dim_2'] but the metadata says [B, 8, 7]"),
])
def test_model_with_an_invalid_output_is_refused_at_load(model_path, tmp_path, kind, fragment):
    from model_factory import with_broken_output

    broken = with_broken_output(model_path, tmp_path / f"{kind}.onnx", kind)
    for warmup in (0, 3):  # the check call runs even without warm-up
        with pytest.raises(ModelFileError) as info:
            OnnxPolicy(broken, providers=[CPU], warmup=warmup)
        message = str(info.value)
        assert str(broken) in message and len(message.splitlines()) == 1
        assert fragment.split("'Addactions")[0] in message, message


def test_output_invalid_at_run_time_is_an_invalid_output_error(model_path, tmp_path):
    from model_factory import with_broken_output

    from flow_policy_ros.errors import InvalidOutputError

    policy = OnnxPolicy(with_broken_output(model_path, tmp_path / "neg.onnx", "nan_if_negative"), providers=[CPU])
    obs = np.zeros(policy.metadata.obs_dim, np.float32)
    assert np.all(np.isfinite(policy.predict(obs)))
    obs[0] = -0.5
    with pytest.raises(InvalidOutputError, match=r"neg.onnx: output 'actions' has 56 NaN/inf value\(s\) of 56"):
        policy.predict(obs)
    batch = np.zeros((3, policy.metadata.obs_dim), np.float32)
    batch[1, 0] = -1.0
    with pytest.raises(InvalidOutputError, match="56 NaN/inf value"):
        policy.predict(batch)


# --------------------------------------------------------------------------- output range guard (issue 22 item 2)

NARROW_ACTIONS = {"low": [-1.0] * 7, "high": [1.0] * 7}  # a training action range of ±1 rad on every joint


def test_a_model_whose_outputs_sit_3_rad_off_its_training_range_is_refused_at_load(tmp_path):
    from model_factory import with_broken_output

    base = make_tiny_model(tmp_path / "narrow.onnx", seed=1, action_range=NARROW_ACTIONS)
    off = with_broken_output(base, tmp_path / "off.onnx", "constant", value=3.0)
    with pytest.raises(ModelFileError) as info:
        OnnxPolicy(off, providers=[CPU], warmup=0)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(off) in message
    assert ("output outside the training action range: joint lbr_iiwa_joint_1 = 3.000 rad is 1 range widths outside "
            "the training action range [-1.000, 1.000] (output_margin 0.25)") in message
    assert OnnxPolicy(off, providers=[CPU], warmup=0, output_margin=1.5).metadata.action_range is not None  # relaxed


def test_a_model_without_an_action_range_loads_with_the_guard_off(model_path, tmp_path):
    from model_factory import with_broken_output

    from flow_policy_ros.runtime.metadata import output_guard_status

    def drop(props):
        meta = json.loads(props[METADATA_KEY])
        meta.pop("action_range")
        return {**props, METADATA_KEY: json.dumps(meta)}

    bare = _rewrite_metadata(with_broken_output(model_path, tmp_path / "off.onnx", "constant"), tmp_path / "bare.onnx", drop)
    policy = OnnxPolicy(bare, providers=[CPU], warmup=0)  # the shipped models today: no range, nothing to check
    assert policy.metadata.action_range is None
    assert output_guard_status(policy.metadata.action_range, 0.25) == "off: no action range in metadata"


def test_malformed_action_range_is_a_one_line_error(model_path, tmp_path):
    def bad(props):
        meta = json.loads(props[METADATA_KEY])
        meta["action_range"] = {"low": [0.0] * 3, "high": [1.0] * 3}
        return {**props, METADATA_KEY: json.dumps(meta)}

    with pytest.raises(ModelFileError, match="metadata action_range is malformed .*expected one per action joint"):
        OnnxPolicy(_rewrite_metadata(model_path, tmp_path / "bad.onnx", bad), providers=[CPU], warmup=0)


def test_output_range_problem_names_joint_value_and_range():
    from flow_policy_ros.runtime.metadata import output_range_problem
    from flow_policy_ros.runtime.ood import ObservationRange

    rng = ObservationRange([-1.0, 0.0], [1.0, 0.5], ("a", "b"))
    chunk = np.zeros((4, 2))
    assert output_range_problem(chunk, rng, 0.25) == "" and output_range_problem(chunk + 9, None, 0.25) == ""
    chunk[2, 1] = 0.625  # 0.25 widths beyond 0.5: on the margin, accepted
    assert output_range_problem(chunk, rng, 0.25) == ""
    chunk[3, 1] = 0.7
    assert output_range_problem(chunk, rng, 0.25) == ("joint b = 0.700 rad is 0.4 range widths outside the training "
                                                       "action range [0.000, 0.500] (output_margin 0.25)")
