"""`python -m server` is `chatbot-backend`."""

import sys

from server.cli import main

sys.exit(main())
