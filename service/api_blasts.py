"""API resources: blasts (being built)."""
