"""SLO burn rates: the in-app evaluator (monitoring.slo) and the Prometheus rules shipped beside it
(monitoring/prometheus/rules.yml), which promtool checks and unit-tests (`make promtool` installs
it; the test fails, never skips, without it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.prometheus.rules import prometheus_rules
from monitoring.slo import BURN_RULES, WINDOWS_S, burn_rate, firing

RULES_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed: run `make promtool` (Debian's prometheus package provides it)"
    return path


def test_the_shipped_rules_are_the_generated_ones() -> None:
    """Regenerate with `manage.py slo_rules > monitoring/prometheus/rules.yml` after changing a target."""
    assert (RULES_DIR / "rules.yml").read_text() == prometheus_rules()


def test_every_sli_and_tier_has_a_page_and_a_ticket_alert() -> None:
    groups = yaml.safe_load((RULES_DIR / "rules.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    seen = {(a["alert"], a["labels"]["sli"], a["labels"]["tier"], a["labels"]["severity"]) for a in alerts}
    assert len(seen) == len(alerts) == 2 * 3 * 3
    assert ("SloBurnPage", "run_success", "free", "critical") in seen
    assert ("SloBurnTicket", "availability", "enterprise", "warning") in seen


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", "rules.yml"], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_the_burn_alerts() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "rules_test.yml"], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def per_minute(good: int, total: int, minutes: int) -> dict[int, tuple[int, int]]:
    """Windows of a steady stream: `good` of `total` events a minute for `minutes` minutes."""
    return {w: (good * min(minutes, w // 60), total * min(minutes, w // 60)) for w in WINDOWS_S}


def test_the_in_app_evaluator_agrees_with_promtools_scenario() -> None:
    """rules_test.yml's 70 minutes, counted the way the sweep counts them."""
    assert firing(per_minute(1, 11, 70), 0.95) is BURN_RULES[0]  # free run_success: page
    assert firing(per_minute(5, 10, 70), 0.95) is BURN_RULES[1]  # free first_event: ticket only
    assert firing(per_minute(10, 10, 70), 0.98) is None  # pro: healthy
    one_failure = {w: (0, 1) for w in WINDOWS_S}
    assert firing(one_failure, 0.99) is None  # enterprise: 1 run is below the 10-event guard


def test_burn_rate_is_the_error_ratio_over_the_budget() -> None:
    assert burn_rate(99, 100, 0.99) == pytest.approx(1.0)
    assert burn_rate(0, 0, 0.99) == 0.0
    assert burn_rate(856, 1000, 0.99) == pytest.approx(14.4)
    # Both windows must burn: a long window over the threshold with a calm short one does not fire.
    windows = {300: (100, 100), 1800: (100, 100), 3600: (800, 1000), 21600: (5000, 6000)}
    assert firing(windows, 0.99) is None
