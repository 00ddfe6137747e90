"""Server interceptors, one concern per module, applied in the order app.py lists."""
