"""`python -m server.simulator`: serve the Ollama simulator until SIGINT/SIGTERM."""

import argparse
import logging
import sys

from server.simulator import add_cli_arguments, run

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
parser = argparse.ArgumentParser(
    prog="python -m server.simulator", description="Ollama-compatible simulator"
)
add_cli_arguments(parser)
sys.exit(run(parser.parse_args()))
