"""paper_repro: reproduce "retrain only the classifier of a pretrained CaffeNet" in Keras 3.

The paper pretrains a CaffeNet-layout AlexNet on ILSVRC-12, freezes its convolution block and
retrains only the fully-connected classifier on MNIST, CIFAR-10 and CIFAR-100 (Table III,
Figure 5). Modules, in the direction data flows:

- ``experiments``: the paper's experiments and presets as plain data, and the choices of a run;
- ``augment`` / ``data`` / ``model``: Caffe's augmentation; tfds pipelines; the Table II network;
- ``solver`` / ``train``: Caffe's SGD update, fit with checkpoints and resume;
- ``runs`` / ``history`` -> ``reports``: a run's directory and record, Table III and Figure 5;
- ``reproduce``: every run of a preset, then the table and figure;
- ``evaluate``, ``export``, ``caffe``, ``cache``: multi-crop accuracy, model export, CaffeNet
  import, cached features for retraining.
"""

__version__ = "0.1.0"
