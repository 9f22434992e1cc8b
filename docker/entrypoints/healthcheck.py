"""The serve image's HEALTHCHECK: exit 0 only when /v2/health/ready answers 200 (no curl in the image)."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("BNFOLD_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError):
    sys.exit(1)
