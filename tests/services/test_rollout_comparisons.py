"""Each service's rollout comparison (its `compare` hook): what agreement between the live
version's answer and a candidate's means for its model, and how far apart two answers are."""

from __future__ import annotations

import numpy as np

from text_api.schemas import Sentiment
from text_api.sentiment import SentimentService
from vision_api.saliency import MASK_AGREEMENT_IOU, SaliencyService


def sentiment(label: str, positive: float) -> Sentiment:
    return Sentiment(label=label, class_id=int(label == "POS"), probabilities=[1 - positive, positive])


def test_lstm_answers_agree_on_the_label_and_are_as_far_apart_as_their_probabilities():
    same = SentimentService.compare(None, sentiment("POS", 0.9), sentiment("POS", 0.7))
    assert same.agreed and abs(same.distance - 0.2) < 1e-9
    opposite = SentimentService.compare(None, sentiment("POS", 0.9), sentiment("NEG", 0.1))
    assert not opposite.agreed and abs(opposite.distance - 0.8) < 1e-9


def test_cv_sod_masks_agree_when_they_overlap_enough():
    live = np.zeros((320, 320, 1), dtype=np.float32)
    live[100:200, 100:200] = 0.9
    shifted = np.roll(live, 3, axis=1)  # 97 of 103 columns shared: IoU 0.94
    moved = np.roll(live, 40, axis=1)
    assert SaliencyService.compare(None, live, live).distance == 0
    close = SaliencyService.compare(None, live, shifted)
    assert close.agreed and close.distance < 1 - MASK_AGREEMENT_IOU
    far = SaliencyService.compare(None, live, moved)
    assert not far.agreed and far.distance > 0.5
    empty = np.zeros_like(live)
    assert SaliencyService.compare(None, empty, empty).agreed, "two empty masks agree"
