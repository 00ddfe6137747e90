"""Fakes of external systems that tests run for real (HTTP servers on 127.0.0.1)."""
