"""The `doubler` model, y = 2x, as a SavedModel with a serving_default signature:

    .venv/bin/python examples/doubler/export_model.py tfserving/models/doubler/1
"""

import sys

import tensorflow as tf


class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * 2.0}


if __name__ == "__main__":
    model = Doubler()
    tf.saved_model.save(model, sys.argv[1], signatures={"serving_default": model.serve})
