"""An application module that cannot be imported: loading it raises."""

raise RuntimeError("boom: this module fails at import time")
