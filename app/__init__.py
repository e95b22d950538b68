"""Chatbot Companion's desktop app: a tray icon and dashboard around the embedded gateway."""
