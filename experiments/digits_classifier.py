r"""The in-domain digits classifier: the feature network of the digits FID / KID / precision-recall.

A LeNet-style CNN (two stages of a 3x3 conv + ReLU and a max-pool; a 128-unit hidden layer whose
activations are the evaluation features; dropout; 10 logits) trained with cross-entropy on the 4,000
training digits of offline_mnist (28x28), random translations of up to 2 pixels. About a minute on
2 CPU cores (400 steps; 72 s of CPU time); held-out accuracy 98.5% on the 1,000 test digits
(`accuracy` in eval.json).

  python -m research.main --config=experiments/digits_classifier.py --workdir=workdirs/digits_classifier
  python -m research.main --config=experiments/digits_classifier.py --workdir=workdirs/digits_classifier \
      --mode=eval

The digits experiments (vae_mnist, ddpm_mnist, flow_mnist, dcgan_mnist, ...) and DALL-E's caption
judge train it themselves the first time they need it, into a shared cache
(research/eval/classifier_cache.py: $RESEARCH_DIGITS_CLASSIFIER, else
~/.cache/research/digits_classifier/<data>), or use config.eval.classifier_workdir. ``data=offline_digits``
trains one for the 8x8 digits (what config.eval.classifier_data='offline_digits' picks):

  python -m research.main --config=experiments/digits_classifier.py:data=offline_digits \
      --workdir=workdirs/digits_classifier_8x8
"""

from research.config import adam, base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, data="offline_mnist", steps=400)
  c = base_config()
  c.seed = 0
  c.batch_size = 128
  c.task.name = "classifier"
  c.task.shift = 1 if arg.data == "offline_digits" else 2  # 8x8 digits: 1 pixel
  c.model.update({"name": "digits_cnn", "channels": (32, 64), "convs_per_stage": 1, "hidden": 128})
  c.model.dropout = 0.3
  c.data.name = arg.data
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.shuffle_buffer = 4_000
  c.optim.model = adam(2e-3, schedule="cosine", warmup_steps=50, end_lr_factor=0.01)
  c.train.num_steps = arg.steps  # 400 steps = 13 epochs of the 4,000 training digits
  c.train.log_every = 50
  c.train.sample_every = 0  # a classifier has no samples
  c.train.checkpoint_every = 200
  c.train.ema_decay = 0.99  # the feature network is the EMA of the weights
  c.eval.batch_size = 256
  c.eval.feature_net = ""  # no sample metrics for a classifier
  return c
