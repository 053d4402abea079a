"""``python -m lavislike`` is the ``lavislike`` command."""
import sys

from lavislike.cli import main

sys.exit(main())
