"""The math of diffusion and flow models, independent of any network.

`schedules`: DDPM noise schedules and the forward/posterior closed forms; `samplers`: DDPM, DDIM and
classifier-free guidance over any `denoise_fn(x_t, t)`; `likelihood`: the variational bound in
bits/dim. Index convention of the discrete modules: t = 0..T-1 (the official DDPM code's).
"""
