"""Prometheus rules equivalent to the in-app SLO burn-rate alerts (monitoring.slo)."""
