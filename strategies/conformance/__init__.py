"""Conformance kit for xsilo strategies (filled in by issue 5)."""
