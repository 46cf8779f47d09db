"""What both peers share: the SavedModel loaded in-process, and one batch of word lists through it,
as text-api's hooks and the model server do it (the same segmentation, padding and rounding)."""

from __future__ import annotations

import os

import tensorflow as tf

from model_preprocessing.text import load_dictionary, pad_batch, segment

MODEL = os.environ.get("LSTM_MODEL", "tfserving/models/lstm/1")
MODEL_VERSION = int(os.path.basename(os.path.normpath(MODEL)))


class Sentiment:
    def __init__(self) -> None:
        load_dictionary()
        self.model = tf.saved_model.load(MODEL).signatures["serving_default"]

    @staticmethod
    def words(line: str) -> list[str]:
        return segment(line)

    def predict(self, sentences: list[list[str]]) -> list[dict]:
        words, nwords = pad_batch(sentences)
        outputs = self.model(words=tf.constant(words), nwords=tf.constant(nwords))
        labels, class_ids, softmax = (outputs[k].numpy() for k in ("labels", "classes_id", "softmax"))
        return [{"label": label.decode("utf-8"), "class_id": int(class_id),
                 "probabilities": [round(float(p), 6) for p in row], "model_version": MODEL_VERSION}
                for label, class_id, row in zip(labels, class_ids, softmax)]
