"""The bundle's entry point: `chatbot-companion` (the tray app, or --headless)."""

import sys

from app.main import main

sys.exit(main())
