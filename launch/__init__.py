"""Sweep designs and backends (later issue)."""
