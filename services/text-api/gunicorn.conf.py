"""gunicorn settings for text-api; the same file in its container and in local mode."""

import gc

from model_preprocessing.text import load_dictionary
from service_kit.gunicorn_base import *  # noqa: F403 - shared worker model, timeouts, logs, metrics

wsgi_app = "text_api:create_app()"

# jieba's dictionary is ~70 MB of Python objects. Loaded here, in the master, every worker shares
# those pages after fork instead of building its own copy; freezing keeps the garbage collector
# from writing to (and so un-sharing) them.
load_dictionary()
gc.freeze()
