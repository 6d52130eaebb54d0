"""ament_python build of flow_policy_ros; also installs with pip into a plain virtualenv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "flow_policy_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/ros2_control", glob("config/ros2_control/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.onnx") + glob("models/*.md")),
    ],
    install_requires=["setuptools"],
    # colcon test runs pytest (instead of falling back to unittest, which finds no test here)
    # when pytest is a test dependency: colcon-core reads extras_require["test"].
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="flow_policy_ros maintainers",
    maintainer_email="maintainers@flow-policy-ros.dev",
    description="Flow-matching action-chunk policy (CFG) exported to ONNX and run in an rclpy node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "flow-policy = flow_policy_ros.cli:main",
            "policy_node = flow_policy_ros.ros.policy_node:main",
            "sim_node = flow_policy_ros.ros.sim_node:main",
        ],
    },
)
