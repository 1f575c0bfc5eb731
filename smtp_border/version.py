"""Which release this is, said the same way by the CLI (`smtp-border
--version`), the controller (`smtp-border-controller --version`, its first
log line), the API (GET /smtp/v1/version), the metrics
(`smtp_border_build_info`) and the status page's footer: an operator who
upgrades, or asks for help, names one number."""
import importlib.metadata
import sys


def version():
    """The installed release (pyproject.toml's version); "unknown" when run from a tree that is not installed."""
    try:
        return importlib.metadata.version("smtp-border")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def python_version():
    return sys.version.split()[0]
