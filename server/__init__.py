"""Chatbot Companion's headless gateway: an aiohttp server in front of a local Ollama."""

__version__ = "0.1.0"
