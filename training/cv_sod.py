"""Train the `cv_sod` salient-object model on composited photos and export it for TF Serving.

    python -m training.cv_sod --export-dir tfserving/models/cv_sod/1
    python -m training.cv_sod --export-dir /tmp/cv_sod/1 --train-images 64 --epochs 1   # smoke

Training images are real objects pasted on real backgrounds (`cv_sod_data`). The network is a
small U-Net that works at 1/2 and 1/4 resolution internally and refines the upsampled mask
against the full-resolution image, so it serves in ~20 ms on a CPU. Two scores go into the
metrics file: held-out composites (MAE, max F, S-measure), and the real photos of
`training/real_photos/`, which no training image contains, beside OpenCV's classical saliency.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from model_preprocessing.image import MODEL_SIZE, RGB_MEAN, mask_to_image, model_input
from training import cv_sod_real_photos
from training.common import make_deterministic, training_parser, write_metrics, write_warmup_requests
from training.cv_sod_data import backgrounds, make_dataset, stamps

TEST_SEED_BASE = 10_000_000  # held-out images use seeds far from the training range
# Real photos from the evaluation set (never trained on), shown in docs/cv_sod_examples/.
EXAMPLE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "flower", "grace_hopper"]


def build_network(width: int):
    import keras
    from keras import layers

    def block(x, channels, dilation=1):
        for _ in range(2):
            x = layers.Conv2D(channels, 3, padding="same", dilation_rate=dilation, use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    image = keras.Input((MODEL_SIZE, MODEL_SIZE, 3), name="img_in")
    x0 = layers.Rescaling(1 / 64.0)(image)
    half = layers.ReLU()(layers.Conv2D(width, 5, strides=2, padding="same")(x0))  # 160
    quarter = block(layers.Conv2D(width * 2, 3, strides=2, padding="same")(half), width * 2)  # 80
    e2 = block(layers.MaxPooling2D()(quarter), width * 4)  # 40
    e3 = block(layers.MaxPooling2D()(e2), width * 6)  # 20
    bottom = block(layers.MaxPooling2D()(e3), width * 8, dilation=2)  # 10
    d3 = block(layers.Concatenate()([layers.UpSampling2D(interpolation="bilinear")(bottom), e3]), width * 6)
    d2 = block(layers.Concatenate()([layers.UpSampling2D(interpolation="bilinear")(d3), e2]), width * 4)
    d1 = block(layers.Concatenate()([layers.UpSampling2D(interpolation="bilinear")(d2), quarter]), width * 2)
    d0 = block(layers.Concatenate()([layers.UpSampling2D(interpolation="bilinear")(d1), half]), width)
    coarse = layers.UpSampling2D(interpolation="bilinear")(layers.Conv2D(1, 1)(d0))  # 320, logits
    refine = layers.Concatenate()([coarse, x0])
    refine = layers.Conv2D(8, 3, padding="same", activation="relu")(refine)
    logits = layers.Add()([coarse, layers.Conv2D(1, 3, padding="same")(refine)])
    return keras.Model(image, logits, name="cv_sod")


def bce_dice_loss(y_true, logits):
    import tensorflow as tf

    bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits))
    prob = tf.sigmoid(logits)
    overlap = tf.reduce_sum(prob * y_true, axis=[1, 2, 3])
    total = tf.reduce_sum(prob + y_true, axis=[1, 2, 3])
    dice = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    return bce + tf.reduce_mean(dice)


def to_model_batch(images: np.ndarray) -> np.ndarray:
    return np.stack([model_input(image) for image in images])


def predict_masks(network, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Saliency in [0,1], [n, 320, 320]."""
    import tensorflow as tf

    out = [tf.sigmoid(network(to_model_batch(images[i : i + batch_size]), training=False)).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)[..., 0]


def evaluate(network, images: np.ndarray, masks: np.ndarray) -> dict:
    import py_sod_metrics

    mae, fm, sm = py_sod_metrics.MAE(), py_sod_metrics.Fmeasure(), py_sod_metrics.Smeasure()
    for pred, gt in zip(predict_masks(network, images), masks):
        pred8, gt8 = (pred * 255).round().astype(np.uint8), (gt * 255).astype(np.uint8)
        for metric in (mae, fm, sm):
            metric.step(pred=pred8, gt=gt8)
    return {
        "mae": round(float(mae.get_results()["mae"]), 4),
        "max_f_measure": round(float(fm.get_results()["fm"]["curve"].max()), 4),
        "s_measure": round(float(sm.get_results()["sm"]), 4),
    }


def save_examples(network, out_dir: Path) -> None:
    """Input | mask | overlay for real photos the model never saw, for a person to look at."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rgb, _ in cv_sod_real_photos.real_photos():
        if name not in EXAMPLE_PHOTOS:
            continue
        saliency = predict_masks(network, rgb[None])[0]
        mask = mask_to_image(saliency[..., None], *rgb.shape[:2])
        overlay = (rgb * 0.35 + np.array([255, 40, 40]) * 0.65 * (mask[..., None] / 255.0)
                   + rgb * 0.65 * (1 - mask[..., None] / 255.0)).astype(np.uint8)
        strip = np.concatenate([rgb, cv2.cvtColor(mask, cv2.COLOR_GRAY2RGB), overlay], axis=1)
        cv2.imwrite(str(out_dir / f"{name}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


def make_serving_module(network):
    import tensorflow as tf

    class SaliencyModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        @tf.function(input_signature=[tf.TensorSpec([None, MODEL_SIZE, MODEL_SIZE, 3], tf.float32, name="img_in")])
        def serve(self, img_in):
            return {"img_out": tf.sigmoid(self.network(img_in, training=False))}

    return SaliencyModule()


def train(args: argparse.Namespace) -> dict:
    make_deterministic(args.seed)
    import keras
    import tensorflow as tf

    started = time.monotonic()
    print(f"{len(stamps())} object photos, {len(backgrounds())} backgrounds")
    train_images, train_masks = make_dataset(args.seed, args.train_images)
    test_images, test_masks = make_dataset(TEST_SEED_BASE + args.seed, args.test_images)
    print(f"generated {len(train_images)} training and {len(test_images)} held-out images "
          f"in {time.monotonic() - started:.0f}s")

    network = build_network(args.width)
    print(f"parameters: {network.count_params():,}")
    steps = args.epochs * int(np.ceil(len(train_images) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=steps, alpha=0.05)
    network.compile(optimizer=keras.optimizers.Adam(schedule), loss=bce_dice_loss)
    # Keep the images as uint8 and prepare each batch on the fly: float copies of the whole
    # set would take ~5 GB.
    dataset = (
        tf.data.Dataset.from_tensor_slices((train_images, train_masks))
        .shuffle(len(train_images), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch_size)
        .map(lambda image, mask: (tf.cast(image, tf.float32) - RGB_MEAN, tf.cast(mask[..., None], tf.float32)))
        .prefetch(2)
    )
    photos = cv_sod_real_photos.real_photos()

    def real_photo_progress(epoch, logs):
        """Printed each epoch, to see early whether composites carry over to photos."""
        maps = cv_sod_real_photos.model_maps(lambda batch: tf.sigmoid(network(batch, training=False)).numpy(), photos)
        print(f"epoch {epoch + 1} real photos: {cv_sod_real_photos.score(maps, [m for _, _, m in photos])}", flush=True)

    network.fit(dataset, epochs=args.epochs, verbose=2,
                callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=real_photo_progress)])

    metrics = {
        "model": "cv_sod",
        **evaluate(network, test_images, test_masks),
        "held_out_images": len(test_images),
        "real_photos": cv_sod_real_photos.evaluate(lambda batch: tf.sigmoid(network(batch, training=False)).numpy()),
        "train_images": len(train_images),
        "parameters": int(network.count_params()),
        "seed": args.seed,
        "epochs": args.epochs,
        "train_seconds": round(time.monotonic() - started, 1),
    }
    export_dir = Path(args.export_dir)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    module = make_serving_module(network)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    write_warmup_requests(export_dir, "cv_sod", [{"img_in": to_model_batch(test_images[:1])}])
    write_metrics(export_dir, metrics)
    if args.examples_dir:
        save_examples(network, Path(args.examples_dir))
    print(metrics)
    return metrics


def main() -> None:
    parser = training_parser(__doc__, "cv_sod")
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=12, help="channels of the first stage")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--examples-dir", default=None, help="write input/mask/overlay PNGs of evaluation photos here")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
