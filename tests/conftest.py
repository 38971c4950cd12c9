"""Suite-wide environment: offline hubs, a private Prefect home, a patient ephemeral server.

Set before any test module imports diffusers/transformers/prefect, so nothing reaches a hub and no
test touches the user's ~/.prefect.
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mace-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
