"""paper_repro: reproduce "retrain only the classifier of a pretrained CaffeNet" in Keras 3.

The paper pretrains a CaffeNet-layout AlexNet on ILSVRC-12, freezes its convolution block and
retrains only the fully-connected classifier on MNIST, CIFAR-10 and CIFAR-100 (Table III,
Figure 5). Modules, in the direction data flows:

- ``experiments``: the paper's experiments and presets as plain data;
- ``data`` / ``model``: tfds pipelines with Caffe's augmentation; the Table II network;
- ``solver`` / ``train``: Caffe's SGD update, fit with checkpoints and resume;
- ``history`` -> ``figures``: the saved record of a run, Table III and Figure 5 from it;
- ``evaluate``, ``export``, ``caffe``: multi-crop accuracy, model export, CaffeNet import.
"""

__version__ = "0.1.0"
