"""HTTP service: FastAPI app and web page."""
