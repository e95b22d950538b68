"""`python -m app` is `chatbot-companion`."""

import sys

from app.main import main

sys.exit(main())
