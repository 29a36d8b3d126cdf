"""TensorFlow for the host input pipelines, kept off the GPUs.

JAX computes on the accelerators; TensorFlow only reads, decodes and augments
images on the host. Every module of senet_jax that needs TensorFlow imports it
from here, so that at its first import it is hidden from the GPUs: it then never
initialises one or takes its memory beside JAX (docs/accelerators.md). Digits,
fake data and the trainer never import it.
"""
import tensorflow as tf

try:
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # the program's own TensorFlow has started its devices already
    pass
