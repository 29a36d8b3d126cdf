"""fake: synthetic uint8 images for throughput measurements. No TensorFlow,
unless config.randaugment is set (then its ops run on each training batch, and
their cost is measured with the rest)."""

import logging

import numpy as np

from senet_jax.data import indexing
from senet_jax.data.base import Source, batch_randaugment, eval_image_size

# A small pool of distinct batches, cycled: generating fresh random images
# every step would measure numpy, not the model.
_POOL = 4


class FakeSource(Source):

    def __init__(self, config, shard: indexing.Shard):
        gb, s = shard.global_batch, config.image_size
        self.num_classes = config.get('num_classes', 1000) or 1000
        self.num_train_examples = config.get('fake_num_examples', 0) or gb * 100
        self.num_eval_examples = max(gb, self.num_train_examples // 10)
        shard.steps_per_epoch(self.num_train_examples, 'fake')
        if shard.repeats > 1:   # accepted, so that a recipe's cost can be measured
            logging.info('dataset=fake: repeated_augmentation=%d leaves the noise images '
                         'as they are (no examples to repeat, no augmentation)',
                         shard.repeats)
        self.seed, self.shard = config.seed, shard
        rng = np.random.default_rng([config.seed, shard.process_index])
        self.images = rng.integers(0, 256, size=(_POOL, shard.local_batch, s, s, 3),
                                   dtype=np.uint8)
        e = eval_image_size(config)   # eval_image_size: eval images of their own
        self.eval_images = self.images if e == s else rng.integers(
            0, 256, size=(_POOL, shard.local_batch, e, e, 3), dtype=np.uint8)
        self.randaugment = batch_randaugment(config, shard)

    def _labels(self, step, stream):
        rng = np.random.default_rng([self.seed, step, stream])
        labels = rng.integers(0, self.num_classes, size=self.shard.global_batch)
        return labels.astype(np.int32)[self.shard.rows]

    def train_batches(self, start_step):
        step = start_step
        while True:
            images = self.images[step % _POOL]
            if self.randaugment:
                images = self.randaugment(images, step)
            yield {'image': images, 'label': self._labels(step, stream=2)}
            step += 1

    def eval_batches(self):
        for b, (_, mask) in enumerate(indexing.eval_index_batches(
                self.num_eval_examples, self.shard)):
            yield {'image': self.eval_images[b % _POOL],
                   'label': self._labels(b, stream=3), 'mask': mask}
