"""``python -m nac_lightning.data ...`` is ``nac-download ...`` (see :mod:`.download`)."""

import sys

from nac_lightning.data.download import main

if __name__ == "__main__":
    sys.exit(main())
