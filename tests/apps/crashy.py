"""An app whose import kills the process: every worker dies right after it starts (a crash loop)."""

import os

os._exit(1)
