"""The image tests reuse the chart tests' helpers (tests/chart/chart_support.py): the rendered chart
and the files a pod would see."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))

import chart_support  # noqa: E402
import test_image  # noqa: E402


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if test_image.FACTS:
        terminalreporter.section("latchkey image: built and run with podman")
    for what, fact in sorted(test_image.FACTS.items()):
        terminalreporter.write_line(f"{what}: {fact}")


def pytest_sessionfinish(session, exitstatus):
    chart_support.fail_on_skips(session, exitstatus, "the image tests")
