"""Loads the gpuconform pytest plugins for this checkout, unless the installed package already did."""

from importlib.metadata import entry_points

pytest_plugins = (
    []
    if any(ep.name == "gpuconform" for ep in entry_points(group="pytest11"))
    else ["gpuconform.fixtures.plugin", "gpuconform.reports.pytest_reports"]
)
