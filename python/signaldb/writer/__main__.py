"""``python -m signaldb.writer`` runs the writer service (same as ``signaldb-writer``)."""

import sys

from signaldb.writer.main import main

sys.exit(main())
