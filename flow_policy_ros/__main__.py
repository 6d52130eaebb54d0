"""``python -m flow_policy_ros VERB ...`` is ``flow-policy VERB ...``."""

import sys

from flow_policy_ros.cli import main

sys.exit(main())
