"""Webhook requests leaving the process: the SSRF-guarded HTTP client."""
