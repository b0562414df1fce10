import sys

from mp_lightning.cli import main

sys.exit(main())
