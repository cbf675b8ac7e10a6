import sys

from signaldb.loadgen import main

sys.exit(main())
