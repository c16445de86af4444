r"""pix2pix (Isola et al. 2017) on CMP Facades: architectural label maps -> photos, the paper's recipe.

The paper's 256x256 setting (research.config.pix2pix_paper): U-Net-256, the 70x70 conditional
PatchGAN, cGAN + 100 x L1, Adam 2e-4 betas (0.5, 0.999), batch 1, jitter 286 -> 256 and
mirroring, 200 epochs of the 400 training pairs (100 at the base rate, 100 of linear decay to 0).
Evaluation on the 106 test pairs: L1 / PSNR / SSIM, and FID of the outputs vs the test photos in
InceptionV3 (converted weights: config.eval.inception_weights).

Data: `pix2pix/facades` (research/data/pix2pix_builder.py: the authors' tarball from
efrosgans.eecs.berkeley.edu, A|B JPEGs split in two; input = the label map). Internet once:

  python -m research.main --config=experiments/pix2pix_facades.py --workdir=workdirs/pix2pix_facades \
      --config.data.download=True
"""

from research.config import pix2pix_paper


def get_config(arg=None):
  del arg
  return pix2pix_paper(
    "pix2pix/facades", eval_split="test", train_pairs=400, epochs=200, batch_size=1, num_eval=106
  )
