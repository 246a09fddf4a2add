"""`python -m voicebot` runs the command line."""

import sys

from voicebot.cli import main

sys.exit(main())
