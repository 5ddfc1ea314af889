"""The fault suite's port base, spelled once. Imports stdlib only.

Every port the suite opens is BASE + n (private stack +10..+13, the three-broker cluster
+20..+29, the property world's redis-server +40..+49, the Redis Cluster +60..+65 (its bus
ports are set below the ephemeral range too), worker metrics +1/+2, the sealer's metrics +3).
The default sits below Linux's ephemeral range (32768-60999): a client reconnecting to a killed
broker can otherwise connect to itself on the dead port and keep it taken.
PERMBROKER_FAULTS_PORT_BASE moves every port (two checkouts on one machine).
"""

from __future__ import annotations

import os

BASE = int(os.environ.get("PERMBROKER_FAULTS_PORT_BASE", "25100"))
