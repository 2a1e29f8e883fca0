"""Shared state for the chart tests: what was validated, printed at the end of the run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chart_support  # noqa: E402


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if chart_support.VALIDATED:
        terminalreporter.section("latchkey chart: manifests validated")
    for scenario, (validated, crds, versions) in sorted(chart_support.VALIDATED.items()):
        crd_note = f", plus {crds} custom resource(s) checked by field" if crds else ""
        terminalreporter.write_line(
            f"{scenario}: {validated} manifests validated (strict) against Kubernetes "
            f"{' and '.join(versions)}{crd_note}"
        )
    if chart_support.SERVED:
        terminalreporter.section("latchkey chart: rendered config.toml run by the real binary")
    for scenario, message in sorted(chart_support.SERVED.items()):
        terminalreporter.write_line(f"{scenario}: {message}")


def pytest_sessionfinish(session, exitstatus):
    chart_support.fail_on_skips(session, exitstatus, "the chart tests")
