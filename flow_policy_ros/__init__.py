"""flow_policy_ros: flow-matching action-chunk policies for ROS 2 (train, export to ONNX, run)."""

__version__ = "0.1.0"
