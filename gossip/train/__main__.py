import sys

from gossip.train import main

sys.exit(main())
