"""FID, KID, IS and precision/recall against independent computations and known answers."""

import numpy as np
import pytest

from research.errors import UserError
from research.eval import metrics


def _random_cov(rng, d):
  a = rng.normal(size=(d, 2 * d))
  return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def _fid_by_eigh(mu1, s1, mu2, s2):
  """Tr((S1 S2)^(1/2)) as Tr((R S2 R)^(1/2)) with R = S1^(1/2): symmetric, so eigh suffices."""
  w1, v1 = np.linalg.eigh(s1)
  r = (v1 * np.sqrt(np.maximum(w1, 0))) @ v1.T
  w = np.linalg.eigvalsh(r @ s2 @ r)
  tr_sqrt = np.sum(np.sqrt(np.maximum(w, 0)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_frechet_distance_matches_an_eigendecomposition():
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert got == pytest.approx(_fid_by_eigh(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
  assert metrics.frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(got, rel=1e-9)
  # Closed form for commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2 + |mu1 - mu2|^2.
  a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
  want = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
  for method in ("sqrtm", "eigh"):
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(want, 1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(500, 8))
  mu, sigma = metrics.gaussian_stats(x)
  assert mu.dtype == np.float64 and sigma.shape == (8, 8)
  np.testing.assert_allclose(sigma, np.cov(x.T), rtol=1e-12)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
  mu2, sigma2 = metrics.gaussian_stats(x + 0.5)
  assert metrics.frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(8 * 0.25, rel=1e-8)


def test_frechet_distance_of_singular_covariances_uses_the_eps_offset():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 32))  # 5 samples in 32 dimensions: rank-4 covariances
  y = rng.normal(size=(5, 32))
  mu1, s1 = metrics.gaussian_stats(x)
  mu2, s2 = metrics.gaussian_stats(y)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(got) and got > 0
  assert got == pytest.approx(_fid_by_eigh(mu1, s1, mu2, s2), rel=1e-3)


def test_frechet_distance_retries_with_eps_when_the_root_is_not_finite(monkeypatch):
  import scipy.linalg

  rng = np.random.default_rng(8)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  s1, s2 = _random_cov(rng, 4), _random_cov(rng, 4)
  real_sqrtm, calls = scipy.linalg.sqrtm, []

  def flaky_sqrtm(a):  # the first root "fails" as sqrtm does on a singular product
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
  got = metrics.frechet_distance(mu1, s1, mu2, s2, eps=1e-2)
  np.testing.assert_allclose(calls[1], (s1 + 1e-2 * np.eye(4)) @ (s2 + 1e-2 * np.eye(4)))
  r = real_sqrtm((s1 + 1e-2 * np.eye(4)) @ (s2 + 1e-2 * np.eye(4))).real
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(r)
  assert got == pytest.approx(want, rel=1e-10)


def test_frechet_distance_rejects_mismatched_statistics():
  with pytest.raises(UserError, match="same feature network"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_unbiased_for_one_distribution_and_positive_for_a_shift():
  rng = np.random.default_rng(3)
  d = 16
  draws = []
  for i in range(40):  # many independent pairs of small samples of one distribution
    x, y = rng.normal(size=(50, d)), rng.normal(size=(50, d))
    draws.append(metrics.kid(x, y, num_subsets=1, subset_size=50, seed=i)[0])
  draws = np.array(draws)
  # Unbiased: the mean is within ~3 standard errors of 0 (a biased V-statistic would sit at
  # ~ +2 E k(x, x) / m, about 20 standard errors away here).
  assert abs(draws.mean()) < 3 * draws.std() / np.sqrt(len(draws))
  assert (draws < 0).any()  # an unbiased estimator of 0 must go negative
  shifted, std = metrics.kid(rng.normal(size=(200, d)), rng.normal(size=(200, d)) + 0.5, 10, 100)
  assert shifted > 10 * abs(draws.mean()) and shifted > 5 * std


def test_kid_matches_the_formula_on_one_full_subset():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  m = 7
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  want = (xx + yy) / (m * (m - 1)) - 2 * xy / m**2
  mean, std = metrics.kid(x, y, num_subsets=3, subset_size=100)  # subsets = whole sets (permuted)
  assert mean == pytest.approx(want, rel=1e-10) and std == pytest.approx(0, abs=1e-9)


def test_inception_score_of_uniform_and_of_confident_logits():
  k = 10
  assert metrics.inception_score(np.zeros((100, k)), splits=5) == pytest.approx((1.0, 0.0))
  one_hot = 50.0 * np.eye(k)[np.arange(200) % k]  # each class equally often in every split
  mean, std = metrics.inception_score(one_hot, splits=4)
  assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
  collapsed = 50.0 * np.eye(k)[np.zeros(200, int)]  # confident but one class: IS 1
  assert metrics.inception_score(collapsed, splits=4)[0] == pytest.approx(1.0, rel=1e-6)


def test_inception_score_matches_a_direct_computation():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(30, 6)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for part in (p[:10], p[10:20], p[20:]):
    py = part.mean(0)
    scores.append(np.exp(np.mean([np.sum(q * np.log(q / py)) for q in part])))
  assert metrics.inception_score(logits, splits=3) == pytest.approx(
    (np.mean(scores), np.std(scores)), rel=1e-10
  )


def test_precision_recall_on_point_clouds_with_known_overlap():
  rng = np.random.default_rng(6)
  real = rng.normal(size=(400, 4))
  assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
  p, r = metrics.precision_recall(real, rng.normal(size=(400, 4)))
  assert p > 0.85 and r > 0.85  # same distribution, different draws
  assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)  # disjoint
  # Fake covers only the half of the real cloud with x0 > 0: precise but without full recall.
  inside = real[real[:, 0] > 0.3]
  fake = inside[rng.choice(len(inside), 300)] + rng.normal(scale=0.01, size=(300, 4))
  p, r = metrics.precision_recall(real, fake)
  assert p > 0.95 and 0.2 < r < 0.6


def test_precision_recall_blocks_do_not_change_the_result():
  rng = np.random.default_rng(7)
  real, fake = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) * 1.3 + 0.2
  whole = metrics.precision_recall(real, fake, k=3)
  tiny_blocks = metrics.precision_recall(real, fake, k=3, block_bytes=8 * 300 * 7)  # 7 rows
  assert whole == tiny_blocks
  # Independent brute force: full distance matrices, k-th neighbour by sorting.
  dist = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
  rr, rf = np.sort(dist(real, real), 1)[:, 3], np.sort(dist(fake, fake), 1)[:, 3]
  d = dist(fake, real)
  want = ((d <= rr[None]).any(1).mean(), (d.T <= rf[None]).any(1).mean())
  assert whole == pytest.approx(want)
