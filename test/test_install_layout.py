"""The installed layout that ``ros2 run`` / ``ros2 launch`` (launch_ros) rely on, and the package metadata.

Runs everywhere (launch_ros is not needed): the install prefix found through the ament index
(``make setup``'s venv, a ``pip install`` or a colcon install) must hold the package marker,
``share/flow_policy_ros/{package.xml,launch,config,models}`` and each console script as an
executable in ``lib/flow_policy_ros`` (launch_ros resolves ``executable=`` with
``shutil.which(exe, path=<prefix>/lib/<package>)``). package.xml must be well-formed format 3 and
name a rosdep key for every third-party module the package and its launch files import.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from flow_policy_ros import paths

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "flow_policy_ros"
#: Third-party module -> the rosdep key package.xml must list as exec_depend.
IMPORT_KEYS = {
    "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces", "builtin_interfaces": "builtin_interfaces",
    "rosgraph_msgs": "rosgraph_msgs", "std_msgs": "std_msgs", "sensor_msgs": "sensor_msgs",
    "trajectory_msgs": "trajectory_msgs", "geometry_msgs": "geometry_msgs", "diagnostic_msgs": "diagnostic_msgs",
    "lifecycle_msgs": "lifecycle_msgs", "ament_index_python": "ament_index_python", "launch": "launch",
    "launch_ros": "launch_ros", "numpy": "python3-numpy", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib", "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip", "apsw": "python3-apsw",
    "pyarrow": "python3-pyarrow-pip", "av": "python3-av-pip",
    "pybullet": "python3-pybullet-pip", "pybullet_data": "python3-pybullet-pip", "pybullet_utils": "python3-pybullet-pip",
}
#: Imported only by training and export, which run where torch is installed (README), not on the robot.
TRAINING_ONLY = {"torch", "onnx", "onnxscript"}
#: Needed at run time without a direct import: rclpy.lifecycle's services, and the `ros2 launch` verb.
INDIRECT_KEYS = {"lifecycle_msgs", "ros2launch"}


@pytest.fixture(scope="module")
def prefix() -> Path:
    try:
        return paths.share_dir().parents[1]
    except FileNotFoundError as exc:
        pytest.fail(f"package not installed: {exc} (run `make setup`)")


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.py's entry_points."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return dict(line.replace(" ", "").split("=", 1) for line in entry_points["console_scripts"])


def test_ament_index_marker_and_share_files(prefix):
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    assert (share / "package.xml").read_text() == (REPO_ROOT / "package.xml").read_text(), "stale: `make setup`"
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml"), ("models", "*.onnx")):
        sources = sorted(p.name for p in (REPO_ROOT / folder).glob(pattern))
        assert sources and sources == sorted(p.name for p in (share / folder).glob(pattern)), f"share/{folder} differs"
    for path in (REPO_ROOT / "config").glob("*.yaml"):
        assert (share / "config" / path.name).read_text() == path.read_text(), f"stale {path.name}: `make setup`"


def test_executables_where_launch_ros_looks(prefix):
    """Each console script is an executable in <prefix>/lib/flow_policy_ros that runs this package."""
    libexec = prefix / "lib" / PACKAGE
    assert libexec.is_dir(), f"{libexec} missing: launch_ros refuses the package ('libexec directory does not exist')"
    for name, target in console_scripts().items():
        found = shutil.which(name, path=str(libexec))
        assert found is not None, f"{name} not found as an executable in {libexec}"
        text = Path(found).resolve().read_text()
        assert text.startswith("#!") and PACKAGE in text, f"{found} is not this package's {name} script"
        interpreter = text.splitlines()[0][2:].split()[0]
        assert os.access(interpreter, os.X_OK), f"{found}: interpreter {interpreter} not executable"
        module = target.split(":")[0]
        assert module.startswith(PACKAGE) and importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_ament_index_python_finds_the_prefix(prefix, monkeypatch):
    """What ros2 launch / get_package_share_directory do, with the prefix on AMENT_PREFIX_PATH."""
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", "")]))
    assert Path(get_package_prefix(PACKAGE)) == prefix
    assert Path(get_package_share_directory(PACKAGE)) == prefix / "share" / PACKAGE


def test_make_venv_is_on_ament_prefix_path(prefix):
    """The make venv: its activate script prepends it to AMENT_PREFIX_PATH, and so does every make target."""
    if Path(sys.prefix).resolve() != prefix.resolve() or sys.prefix == sys.base_prefix:
        pytest.skip("not running from the virtualenv the package is installed in")
    assert "AMENT_PREFIX_PATH" in (prefix / "bin" / "activate").read_text()
    if "MAKELEVEL" in os.environ:
        entries = [Path(p).resolve() for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        assert prefix.resolve() in entries, "make did not export AMENT_PREFIX_PATH with the venv"


def _third_party_imports(files: list[Path]) -> set[str]:
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found |= {n.split(".")[0] for n in names}
    return {m for m in found if m not in sys.stdlib_module_names and m != PACKAGE}


def test_package_xml_lists_every_runtime_dependency():
    root = ET.parse(REPO_ROOT / "package.xml").getroot()  # also: no "--" inside comments (rosdep/colcon parse it)
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE and root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    imports = _third_party_imports(sorted((REPO_ROOT / PACKAGE).rglob("*.py")) + sorted((REPO_ROOT / "launch").glob("*.py")))
    unknown = imports - set(IMPORT_KEYS) - TRAINING_ONLY
    assert not unknown, f"imports without a rosdep key in this test's table (add one, and to package.xml): {unknown}"
    needed = {IMPORT_KEYS[m] for m in imports if m in IMPORT_KEYS} | INDIRECT_KEYS
    assert needed <= exec_depends, f"package.xml lacks exec_depend {sorted(needed - exec_depends)}"
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}


def test_colcon_runs_pytest_and_installs_scripts_to_lib():
    """colcon test uses pytest only when setup.py declares it as a test dependency (else it falls back to
    unittest and finds nothing); colcon build installs console scripts to lib/<package> (setup.cfg)."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))
    assert "pytest" in extras["test"]
    setup_cfg = (REPO_ROOT / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/flow_policy_ros" in setup_cfg and "script_dir=$base/lib/flow_policy_ros" in setup_cfg
