"""tf.data input pipelines and the embedded synthetic dataset (the only package that imports tensorflow)."""
