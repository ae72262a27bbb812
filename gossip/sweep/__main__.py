import sys

from gossip.sweep import main

sys.exit(main())
