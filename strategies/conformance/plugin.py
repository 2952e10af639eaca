"""pytest plugin entry point for the xsilo strategy conformance kit."""
