"""Training code: needs the [train] extra (Keras 3). Backend-agnostic: runs on TensorFlow or JAX."""
