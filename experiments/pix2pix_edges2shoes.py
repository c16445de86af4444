r"""pix2pix (Isola et al. 2017) on edges2shoes: HED edge maps -> shoe photos.

The paper's 256x256 recipe (research.config.pix2pix_paper) with its large-dataset setting: batch 4,
15 epochs of the 49,825 training pairs (the second half with linear decay to 0). Evaluation on
the 200 validation pairs (the release has no test split): L1 / PSNR / SSIM and InceptionV3 FID.

  python -m research.main --config=experiments/pix2pix_edges2shoes.py \
      --workdir=workdirs/pix2pix_edges2shoes --config.data.download=True
"""

from research.config import pix2pix_paper


def get_config(arg=None):
  del arg
  return pix2pix_paper(
    "pix2pix/edges2shoes",
    eval_split="val",
    train_pairs=49_825,
    epochs=15,
    batch_size=4,
    num_eval=200,
  )
