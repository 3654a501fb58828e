"""API resources: releases (being built)."""
