import sys

from model_api_client.cli import main

sys.exit(main())
