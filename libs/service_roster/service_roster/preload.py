"""`python -m service_roster.preload service.toml`: the service's preload, once (its image build runs
this, so caches the preload writes, like jieba's dictionary, are in the image)."""

import sys
from pathlib import Path

from service_roster import read_service, run_preload

if __name__ == "__main__":
    run_preload(read_service(Path(sys.argv[1])))
