"""The OpenAI-compatible server (FastAPI + uvicorn) on the engine."""
