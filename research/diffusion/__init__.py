"""The math of denoising diffusion, independent of any network: schedules, samplers, the bound.

`schedules`: noise schedules and the forward/posterior closed forms; `samplers`: DDPM, DDIM and
classifier-free guidance over any `denoise_fn(x_t, t)`; `likelihood`: the variational bound in
bits/dim. Index convention everywhere: t = 0..T-1 (the official DDPM code's).
"""

from research.diffusion.likelihood import (
  approx_standard_normal_cdf,
  bound_bpd,
  calc_bpd_loop,
  discretized_gaussian_log_likelihood,
  mean_flat,
  normal_kl,
  prior_bpd,
  vb_terms_bpd,
)
from research.diffusion.samplers import (
  cfg_combine,
  ddim_sample,
  ddim_sigmas,
  ddim_step,
  ddpm_sample,
  ddpm_step,
  guided,
)
from research.diffusion.schedules import (
  TARGETS,
  VARIANCES,
  Schedule,
  cosine_schedule,
  eps_from_x0,
  linear_schedule,
  make_schedule,
  model_log_variance,
  p_mean_variance,
  predict_eps,
  predict_x0,
  q_posterior,
  q_sample,
  respace,
  schedule_arrays,
  timestep_subsequence,
  training_target,
)

__all__ = [
  "TARGETS",
  "VARIANCES",
  "Schedule",
  "approx_standard_normal_cdf",
  "bound_bpd",
  "calc_bpd_loop",
  "cfg_combine",
  "cosine_schedule",
  "ddim_sample",
  "ddim_sigmas",
  "ddim_step",
  "ddpm_sample",
  "ddpm_step",
  "discretized_gaussian_log_likelihood",
  "eps_from_x0",
  "guided",
  "linear_schedule",
  "make_schedule",
  "mean_flat",
  "model_log_variance",
  "normal_kl",
  "p_mean_variance",
  "predict_eps",
  "predict_x0",
  "prior_bpd",
  "q_posterior",
  "q_sample",
  "respace",
  "schedule_arrays",
  "timestep_subsequence",
  "training_target",
  "vb_terms_bpd",
]
