"""Expected statistics for abacus's results, computed with scipy/statsmodels.

Writes tests/stats/cases.json: per case the per-variant inputs abacus keeps
as aggregates (units, conversions / sum and sum of squares of per-unit
values) and every number `GET /v1/experiments/{key}/results` reports for
them. The Rust tests in actors/src/stats/ recompute each case and must
agree to 1e-6 relative.

Rerun (any machine with Python 3.10+):

    python3 -m pip install -r tests/stats/requirements.txt
    python3 tests/stats/reference.py

Definitions (the contract the Rust code implements independently):
- binomial variant: rate c/n, stddev sqrt(p(1-p)), 95% Wilson interval
  (statsmodels proportion_confint(method="wilson")).
- mean variant: mean S/n, sample stddev (ddof=1), 95% t interval
  (scipy.stats.t.interval), from the raw per-unit values.
- binomial comparison: difference of rates with the unpooled Wald
  interval (statsmodels confint_proportions_2indep(method="wald")),
  pooled two-proportion z-test (statsmodels proportions_ztest).
- mean comparison: difference of means, Welch's t-test and its interval
  (statsmodels CompareMeans with usevar="unequal", on the raw values).
- relative lift d / control with a delta-method normal interval.
- Holm across treatments (statsmodels multipletests(method="holm")),
  one metric at a time: p_value_holm, and p_value_adjusted when the
  experiment sets no `correction`.
- with `correction`, one family of every treatment x metric with a
  p-value: holm (multipletests "holm"), bh (Benjamini-Hochberg,
  multipletests "fdr_bh") or none (unchanged), each applied to the
  fixed-horizon and to the always-valid p-values apart; significant when
  the adjusted value is <= alpha.
- ratio variant (sum of per-unit numerators x over sum of denominators
  d): R = sum x / sum d; stddev is the sample stddev (ddof=1) of the
  per-unit linearisation (x - R d) / mean(d), computed on the raw
  per-unit values; 95% normal interval R +- z stddev / sqrt(n).
- ratio comparison: difference of ratios, se = sqrt(sd_t^2/n_t +
  sd_c^2/n_c), z = d / se with its two-sided normal p-value and interval;
  chance to win Phi(z).
- capped mean: a mean of min(value, cap) per unit (winsorised at an
  absolute cap), otherwise a mean metric.
- CUPED mean (Deng et al. 2013): theta is the slope of statsmodels OLS
  of every unit's value on its centred covariate, all variants pooled;
  each unit's adjusted value is x - theta (c - mean of all c); the
  variant's mean, stddev, interval and every comparison are those of a
  mean metric on the adjusted values (sum stays the raw sum);
  variance_reduction = 1 - var(x - theta c) / var(x), pooled.
- quantile metric (event values in a log-binned sketch, bin OFFSET + k
  holding (g^(k-1), g^k], g = 1.01/0.99, each event's unit in one of 20
  groups): the q quantile is rank q (n - 1) of the events, interpolated
  inside its bin in log scale (a bin's c events sit at (j + 0.5) / c of
  its width); F = share of events at or below it (its bin's events by the
  same share), var F = k/(k-1) sum_g (a_g - F m_g)^2 / n^2 over the k
  groups holding events (no variance below 2);
  Woodruff: se = (Q(q + z se_F) - Q(q - z se_F)) / (2 z), z = 1.96 (95%),
  or the uncut side's half-width over z when q -+ z se_F leaves [0, 1].
  Variant interval: value +- t(0.975, k - 1) se. Comparison: difference,
  Welch-Satterthwaite degrees of freedom from the two variances (k - 1
  each), scipy's t for the interval and p-value; relative lift and the
  rest as for a mean. Percentiles p50/p90/p95/p99 the same way. The input
  is the sketch's cells ("bin,group,events", space-separated); the values
  are drawn here.
- chance to win: binomial P(p_t > p_c) under Beta(1 + c, 1 + n - c)
  posteriors, by the exact closed form (sum over the treatment's alpha);
  mean: Phi(d / se).
- always-valid p-value: mSPRT with a normal mixture N(0, tau2) on the
  relative lift, Lambda = sqrt(V / (V + tau2)) exp(tau2 r^2 / (2 V (V + tau2))),
  p = min(1, 1 / Lambda), V the delta-method variance of r.
- SRM: chi-square of exposed units against the configured weights
  (scipy.stats.chisquare); detected when p < 0.001.
Degenerate inputs give None with a reason (the Rust code must give null).
"""

import json
import math
import os

import numpy as np
from scipy import special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
from statsmodels.tools import add_constant

Z = stats.norm.ppf(0.975)
RNG = np.random.default_rng(20261122)


def chance_beta(ct, nt, cc, nc):
    """P(p_t > p_c), Beta(1+c, 1+n-c) posteriors: Evan Miller's closed form."""
    a_t, b_t = 1 + ct, 1 + nt - ct
    a_c, b_c = 1 + cc, 1 + nc - cc
    i = np.arange(a_t, dtype=float)
    terms = (
        special.betaln(a_c + i, b_c + b_t)
        - np.log(b_t + i)
        - special.betaln(1 + i, b_t)
        - special.betaln(a_c, b_c)
    )
    return float(np.exp(special.logsumexp(terms)))


def msprt(r, v, tau2):
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * r * r / (2 * v * (v + tau2))
    return min(1.0, math.exp(-log_lambda))


def variant_binomial(key, n, c):
    out = {"variant": key, "units": n, "conversions": c}
    if n == 0:
        out.update(rate=None, stddev=None, ci=None, reason="no exposed units")
        return out
    p = c / n
    out.update(rate=p, stddev=math.sqrt(p * (1 - p)))
    if n < 2:
        out.update(ci=None, reason="fewer than 2 units")
    else:
        lo, hi = proportion_confint(c, n, alpha=0.05, method="wilson")
        out.update(ci=[lo, hi], reason=None)
    return out


def variant_mean(key, values):
    n = len(values)
    s = float(np.sum(values))
    out = {"variant": key, "units": n, "sum": s}
    if n == 0:
        out.update(mean=None, stddev=None, ci=None, reason="no exposed units")
        return out
    mean = s / n
    if n < 2:
        out.update(mean=mean, stddev=None, ci=None, reason="fewer than 2 units")
        return out
    sd = float(np.std(values, ddof=1))
    if sd == 0:
        ci = [mean, mean]
    else:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
        ci = [lo, hi]
    out.update(mean=mean, stddev=sd, ci=ci, reason=None)
    return out


def compare_binomial(t, c, tau2):
    nt, ct, nc, cc = t["units"], t["conversions"], c["units"], c["conversions"]
    out = {"variant": t["variant"]}
    if nc < 2 or nt < 2:
        return null_comparison(out, "fewer than 2 units in a variant")
    pt, pc = ct / nt, cc / nc
    d = pt - pc
    var_t, var_c = pt * (1 - pt) / nt, pc * (1 - pc) / nc
    out["absolute"] = {"estimate": d}
    if var_t + var_c > 0:
        lo, hi = confint_proportions_2indep(ct, nt, cc, nc, method="wald", compare="diff")
        out["absolute"]["ci"] = [lo, hi]
    else:
        out["absolute"]["ci"] = None
    pooled = (ct + cc) / (nt + nc)
    if pooled in (0.0, 1.0):
        out.update(relative=relative(d, pc, pt, var_t, var_c), statistic=None, p_value=None)
        out["chance_to_win"] = chance_beta(ct, nt, cc, nc)
        out["sequential_p_value"] = None
        out["reason"] = "no variance: every unit did the same"
        return out
    z, p = proportions_ztest([ct, cc], [nt, nc], alternative="two-sided")
    out.update(relative=relative(d, pc, pt, var_t, var_c), statistic=float(z), p_value=float(p))
    out["chance_to_win"] = chance_beta(ct, nt, cc, nc)
    out["sequential_p_value"] = sequential(out["relative"], d, var_t + var_c, pc, tau2)
    out["reason"] = None if out["relative"]["estimate"] is not None else out["relative"]["reason"]
    return out


def compare_mean(t_values, c_values, t, c, tau2):
    out = {"variant": t["variant"]}
    nt, nc = len(t_values), len(c_values)
    if nc < 2 or nt < 2:
        return null_comparison(out, "fewer than 2 units in a variant")
    mt, mc = t["mean"], c["mean"]
    d = mt - mc
    var_t, var_c = t["stddev"] ** 2 / nt, c["stddev"] ** 2 / nc
    if var_t + var_c == 0:
        out.update(absolute={"estimate": d, "ci": None}, relative=relative(d, mc, mt, var_t, var_c))
        out.update(statistic=None, p_value=None, chance_to_win=None, sequential_p_value=None)
        out["reason"] = "no variance in either variant"
        return out
    cm = CompareMeans(DescrStatsW(np.asarray(t_values)), DescrStatsW(np.asarray(c_values)))
    tstat, p, _df = cm.ttest_ind(usevar="unequal")
    lo, hi = cm.tconfint_diff(alpha=0.05, usevar="unequal")
    # The same test from the summary statistics abacus keeps.
    check = stats.ttest_ind_from_stats(mt, t["stddev"], nt, mc, c["stddev"], nc, equal_var=False)
    assert math.isclose(check.pvalue, p, rel_tol=1e-9, abs_tol=1e-300), (check.pvalue, p)
    out.update(absolute={"estimate": d, "ci": [lo, hi]}, relative=relative(d, mc, mt, var_t, var_c))
    out.update(statistic=float(tstat), p_value=float(p))
    out["chance_to_win"] = float(stats.norm.cdf(d / math.sqrt(var_t + var_c)))
    out["sequential_p_value"] = sequential(out["relative"], d, var_t + var_c, mc, tau2)
    out["reason"] = None if out["relative"]["estimate"] is not None else out["relative"]["reason"]
    return out


def variant_ratio(key, x, d):
    n = len(x)
    out = {"variant": key, "units": n, "numerator": float(np.sum(x)), "denominator": float(np.sum(d))}
    if n == 0:
        out.update(ratio=None, stddev=None, ci=None, reason="no exposed units")
        return out
    if np.sum(d) == 0:
        out.update(ratio=None, stddev=None, ci=None, reason="the denominator is zero")
        return out
    r = float(np.sum(x) / np.sum(d))
    if n < 2:
        out.update(ratio=r, stddev=None, ci=None, reason="fewer than 2 units")
        return out
    linear = (x - r * d) / np.mean(d)
    sd = float(np.std(linear, ddof=1))
    half = Z * sd / math.sqrt(n)
    out.update(ratio=r, stddev=sd, ci=[r - half, r + half], reason=None)
    return out


def compare_ratio(t_arm, c_arm, t, c, tau2):
    out = {"variant": t["variant"]}
    nt, nc = len(t_arm[0]), len(c_arm[0])
    if nc < 2 or nt < 2:
        return null_comparison(out, "fewer than 2 units in a variant")
    if t["ratio"] is None or c["ratio"] is None:
        return null_comparison(out, "the denominator is zero")
    rt, rc = t["ratio"], c["ratio"]
    d = rt - rc
    var_t, var_c = t["stddev"] ** 2 / nt, c["stddev"] ** 2 / nc
    if var_t + var_c == 0:
        out.update(absolute={"estimate": d, "ci": None}, relative=relative(d, rc, rt, var_t, var_c))
        out.update(statistic=None, p_value=None, chance_to_win=None, sequential_p_value=None)
        out["reason"] = "no variance in either variant"
        return out
    se = math.sqrt(var_t + var_c)
    z = d / se
    out.update(absolute={"estimate": d, "ci": [d - Z * se, d + Z * se]}, relative=relative(d, rc, rt, var_t, var_c))
    out.update(statistic=z, p_value=float(2 * stats.norm.sf(abs(z))))
    out["chance_to_win"] = float(stats.norm.cdf(z))
    out["sequential_p_value"] = sequential(out["relative"], d, var_t + var_c, rc, tau2)
    out["reason"] = None if out["relative"]["estimate"] is not None else out["relative"]["reason"]
    return out


def relative(d, base, mt, var_t, var_c):
    if base == 0:
        return {"estimate": None, "ci": None, "variance": None, "reason": "control is zero"}
    r = d / base
    v = var_t / base**2 + mt**2 * var_c / base**4
    half = Z * math.sqrt(v)
    return {"estimate": r, "ci": [r - half, r + half], "variance": v, "reason": None}


def sequential(rel, d, v, base, tau2):
    """The mSPRT of the difference d (variance v), its mixture given on the
    relative scale (tau2) and carried to the difference's by the control's
    value: N(0, tau2 * base^2)."""
    if rel["estimate"] is None or v == 0:
        return None
    return msprt(d, v, tau2 * base**2)


def null_comparison(out, reason):
    out.update(
        absolute=None,
        relative=None,
        statistic=None,
        p_value=None,
        chance_to_win=None,
        sequential_p_value=None,
        reason=reason,
    )
    return out


def holm(comparisons, key, alpha):
    idx = [i for i, c in enumerate(comparisons) if c[key] is not None]
    adjusted = [None] * len(comparisons)
    if idx:
        _, corrected, _, _ = multipletests([comparisons[i][key] for i in idx], alpha, method="holm")
        for i, p in zip(idx, corrected):
            adjusted[i] = float(p)
    return adjusted


def srm(units, weights):
    total = sum(units)
    if total == 0:
        return {"chi_square": None, "p_value": None, "detected": False, "reason": "no exposed units"}
    w = np.asarray(weights, dtype=float)
    expected = total * w / w.sum()
    chi2, p = stats.chisquare(units, f_exp=expected)
    return {"chi_square": float(chi2), "p_value": float(p), "detected": bool(p < 0.001), "reason": None}


def variant_keys(n):
    return ["control"] + [f"t{i}" for i in range(1, n)]


def case(name, kind, inputs, variants, comparisons, units, weights, alpha, tau2, level=None, cuped=None):
    """A case as the Rust tests read it: its inputs, the expected figures
    and the SRM check of `units` (exposed per variant) against `weights`
    (equal when None)."""
    weights = weights or [1.0] * len(units)
    out = {"name": name, "kind": kind}
    if level is not None:
        out["quantile"] = level
    out.update(alpha=alpha, mixing_variance=tau2, weights=weights, input=inputs)
    if cuped is not None:
        out["cuped"] = cuped
    out.update(variants=variants, comparisons=comparisons, srm=srm(units, weights))
    return out


def case_binomial(name, arms, weights=None, alpha=0.05, tau2=0.01):
    keys = variant_keys(len(arms))
    variants = [variant_binomial(k, n, c) for k, (n, c) in zip(keys, arms)]
    comparisons = [compare_binomial(v, variants[0], tau2) for v in variants[1:]]
    finish(comparisons, alpha)
    inputs = [{"units": n, "conversions": c} for n, c in arms]
    return case(name, "binomial", inputs, variants, comparisons, [n for n, _ in arms], weights, alpha, tau2)


def case_mean(name, arms, weights=None, alpha=0.05, tau2=0.01):
    keys = variant_keys(len(arms))
    arms = [np.asarray(a, dtype=float) for a in arms]
    variants = [variant_mean(k, a) for k, a in zip(keys, arms)]
    comparisons = [compare_mean(a, arms[0], v, variants[0], tau2) for a, v in zip(arms[1:], variants[1:])]
    finish(comparisons, alpha)
    inputs = [
        {"units": len(a), "sum": float(np.sum(a)), "sum_squares": float(np.sum(a * a))} for a in arms
    ]
    return case(name, "mean", inputs, variants, comparisons, [len(a) for a in arms], weights, alpha, tau2)


def case_ratio(name, arms, weights=None, alpha=0.05, tau2=0.01):
    """`arms`: per variant, (numerators, denominators) per unit."""
    keys = variant_keys(len(arms))
    arms = [(np.asarray(x, dtype=float), np.asarray(d, dtype=float)) for x, d in arms]
    variants = [variant_ratio(k, x, d) for k, (x, d) in zip(keys, arms)]
    comparisons = [compare_ratio(a, arms[0], v, variants[0], tau2) for a, v in zip(arms[1:], variants[1:])]
    finish(comparisons, alpha)
    inputs = [
        {
            "units": len(x),
            "sum": float(np.sum(x)),
            "sum_squares": float(np.sum(x * x)),
            "denominator_sum": float(np.sum(d)),
            "denominator_sum_squares": float(np.sum(d * d)),
            "cross": float(np.sum(x * d)),
        }
        for x, d in arms
    ]
    return case(name, "ratio", inputs, variants, comparisons, [len(x) for x, _ in arms], weights, alpha, tau2)


def case_cuped(name, arms, weights=None, alpha=0.05, tau2=0.01):
    """`arms`: per variant, (values, covariates) per unit."""
    keys = variant_keys(len(arms))
    arms = [(np.asarray(x, dtype=float), np.asarray(c, dtype=float)) for x, c in arms]
    xs = np.concatenate([x for x, _ in arms])
    cs = np.concatenate([c for _, c in arms])
    if len(xs) < 2 or np.var(cs) == 0:
        theta = 0.0
    else:
        theta = float(OLS(xs, add_constant(cs - cs.mean(), has_constant="add")).fit().params[1])
    reduction = 0.0
    if len(xs) >= 2 and np.var(xs) > 0:
        reduction = 1 - np.var(xs - theta * cs, ddof=1) / np.var(xs, ddof=1)
    adjusted = [x - theta * (c - cs.mean()) for x, c in arms]
    variants = [variant_mean(k, a) for k, a in zip(keys, adjusted)]
    for v, (x, _) in zip(variants, arms):
        v["sum"] = float(np.sum(x))
    comparisons = [compare_mean(a, adjusted[0], v, variants[0], tau2) for a, v in zip(adjusted[1:], variants[1:])]
    finish(comparisons, alpha)
    inputs = [
        {
            "units": len(x),
            "sum": float(np.sum(x)),
            "sum_squares": float(np.sum(x * x)),
            "covariate_sum": float(np.sum(c)),
            "covariate_sum_squares": float(np.sum(c * c)),
            "covariate_cross": float(np.sum(x * c)),
        }
        for x, c in arms
    ]
    cuped = {"theta": theta, "variance_reduction": float(min(max(reduction, 0.0), 1.0))}
    units = [len(x) for x, _ in arms]
    return case(name, "mean", inputs, variants, comparisons, units, weights, alpha, tau2, cuped=cuped)


def correlated(n, mean, rho, lift=0.0, scale=1.0):
    """(values, covariates): covariates ~ N(mean, scale), values correlated
    with them by rho, shifted by lift."""
    c = RNG.normal(mean, scale, n)
    e = RNG.normal(0, scale, n)
    return mean + lift + rho * (c - mean) + math.sqrt(1 - rho * rho) * e, c


def spenders(n, buy_rate, mean_value, lift=1.0):
    """Revenue before (covariate) and after exposure for the same users:
    a unit that spent before tends to spend again."""
    before = revenue(n, buy_rate, mean_value)
    again = RNG.random(n) < np.where(before > 0, 0.6, buy_rate / 2)
    after = np.where(again, np.round(before * lift * RNG.lognormal(0, 0.3, n) + RNG.exponential(5, n), 2), 0.0)
    return after, before


def finish(comparisons, alpha):
    for key, out in (("p_value", "p_value_holm"), ("sequential_p_value", "sequential_p_value_holm")):
        for c, p in zip(comparisons, holm(comparisons, key, alpha)):
            c[out] = p
            c[key.replace("p_value", "p_value_adjusted")] = p
            c["significant" if key == "p_value" else "sequential_significant"] = p is not None and p <= alpha
    for c in comparisons:
        if c["relative"] is not None:
            c["relative"].pop("variance")
            c["relative"].pop("reason")


def case_family(name, metrics, correction, alpha=0.05, tau2=0.01):
    """One experiment's metrics, corrected as one family (or per metric
    when `correction` is None)."""
    build = {
        "binomial": case_binomial,
        "mean": case_mean,
        "ratio": case_ratio,
        "quantile": lambda name, arms, **kw: case_quantile(name, arms, 0.9, **kw),
    }
    built = [build[kind](name, arms, alpha=alpha, tau2=tau2) for kind, arms in metrics]
    if correction is not None:
        flat = [c for b in built for c in b["comparisons"]]
        for key, flag in (("p_value", "significant"), ("sequential_p_value", "sequential_significant")):
            out = key.replace("p_value", "p_value_adjusted")
            present = [i for i, c in enumerate(flat) if c[key] is not None]
            raw = [flat[i][key] for i in present]
            if correction == "none" or not raw:
                adjusted = raw
            else:
                method = {"holm": "holm", "bh": "fdr_bh"}[correction]
                adjusted = multipletests(raw, alpha, method=method)[1]
            for c in flat:
                c[out], c[flag] = None, False
            for i, p in zip(present, adjusted):
                flat[i][out], flat[i][flag] = float(p), bool(p <= alpha)
    return {
        "name": f"family {name} {correction or 'per metric'}",
        "kind": "family",
        "correction": correction,
        "alpha": alpha,
        "mixing_variance": tau2,
        "metrics": [
            {k: b[k] for k in ("kind", "quantile", "input", "comparisons") if k in b} for b in built
        ],
    }


def revenue(n, buy_rate, mean_value, sd_value=None):
    """Per-unit sums: most units 0, buyers a positive amount (integers or cents)."""
    values = np.zeros(n)
    buyers = RNG.random(n) < buy_rate
    k = int(buyers.sum())
    if sd_value is None:
        values[buyers] = np.round(RNG.lognormal(math.log(mean_value), 0.8, k), 2)
    else:
        values[buyers] = np.round(RNG.normal(mean_value, sd_value, k), 2)
    return values


def counts(n, rate):
    return RNG.poisson(rate, n).astype(float)


def clicks(n, sessions_rate, click_rate):
    """Per unit (clicks, sessions): sessions ~ Poisson, clicks ~ Binomial
    over them, so the two are correlated as in real traffic."""
    sessions = RNG.poisson(sessions_rate, n).astype(float)
    return RNG.binomial(sessions.astype(int), click_rate).astype(float), sessions


def revenue_per_session(n, sessions_rate, buy_rate, mean_value):
    sessions = RNG.poisson(sessions_rate, n).astype(float)
    orders = RNG.binomial(sessions.astype(int), buy_rate)
    value = np.array([np.round(RNG.lognormal(math.log(mean_value), 0.8, k).sum(), 2) for k in orders])
    return value, sessions


# Quantile sketches (see the docstring).
GROUPS = 20
OFFSET = 1100
LN_GAMMA = math.log(1.01 / 0.99)
WOODRUFF_Z = 1.959963984540054
ONE_GROUP = "values from too few units for an interval"
QRNG = np.random.default_rng(20261204)


def bin_of(v):
    if abs(v) < 1e-9:
        return 0
    k = math.ceil(math.log(abs(v)) / LN_GAMMA) + OFFSET
    return k if v > 0 else -k


def value_at(b, inside):
    if b == 0:
        return 0.0
    k = abs(b) - OFFSET
    return math.exp((k - 1 + inside) * LN_GAMMA) if b > 0 else -math.exp((k - inside) * LN_GAMMA)


class Sketch:
    def __init__(self, values, groups):
        cells = {}
        for v, g in zip(values, groups):
            key = (bin_of(float(v)), int(g))
            cells[key] = cells.get(key, 0) + 1
        self.cells = sorted(cells.items())
        self.bins = sorted({b for (b, _), _ in self.cells})
        self.matrix = np.zeros((len(self.bins), GROUPS))
        at = {b: i for i, b in enumerate(self.bins)}
        for (b, g), c in self.cells:
            self.matrix[at[b], g] += c
        self.totals = self.matrix.sum(axis=1)
        self.n = int(self.totals.sum())

    def locate(self, q):
        rank = min(max(q, 0.0), 1.0) * (self.n - 1)
        cum = np.concatenate([[0.0], np.cumsum(self.totals)])
        i = int(np.searchsorted(cum[1:], rank, side="right"))
        inside = min(max((rank - cum[i] + 0.5) / self.totals[i], 0.0), 1.0)
        return i, inside

    def quantile(self, q):
        if self.n == 0:
            return None
        i, inside = self.locate(q)
        return value_at(self.bins[i], inside)

    def estimate(self, q):
        i, inside = self.locate(q)
        weights = np.where(np.arange(len(self.bins)) < i, 1.0, 0.0)
        weights[i] = inside
        below = weights @ self.matrix
        every = self.matrix.sum(axis=0)
        value = value_at(self.bins[i], inside)
        k = int((every > 0).sum())
        if k < 2:
            return value, None, 0
        share = below.sum() / self.n
        se_share = math.sqrt(k / (k - 1) * float(((below - share * every) ** 2).sum())) / self.n
        step = WOODRUFF_Z * se_share
        lower, upper = self.quantile(q - step), self.quantile(q + step)
        if q - step < 0 and q + step <= 1:
            half = upper - value
        elif q + step > 1 and q - step >= 0:
            half = value - lower
        else:
            half = (upper - lower) / 2
        se = half / WOODRUFF_Z
        return value, se * se, k - 1


def variant_quantile(key, units, sketch, q):
    percentiles = {p: sketch.quantile(l) for p, l in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))}
    out = {"variant": key, "units": units, "events": sketch.n, "percentiles": percentiles, "stddev": None}
    if units == 0:
        out.update(value=None, ci=None, reason="no exposed units")
        return out, None
    if sketch.n == 0:
        out.update(value=None, ci=None, reason="no values yet")
        return out, None
    value, variance, df = sketch.estimate(q)
    if units < 2:
        out.update(value=value, ci=None, reason="fewer than 2 units")
        return out, (value, variance, df)
    if variance is None:
        out.update(value=value, ci=None, reason=ONE_GROUP)
        return out, (value, variance, df)
    if variance == 0:
        ci = [value, value]
    else:
        half = stats.t.ppf(0.975, df) * math.sqrt(variance)
        ci = [value - half, value + half]
    out.update(value=value, ci=ci, reason=None)
    return out, (value, variance, df)


def compare_quantile(t, c, t_est, c_est, tau2):
    out = {"variant": t["variant"]}
    if t_est is None or c_est is None:
        no_values = any(v["units"] > 0 and v["events"] == 0 for v in (t, c))
        return null_comparison(out, "no values yet" if no_values else "fewer than 2 units in a variant")
    if t["units"] < 2 or c["units"] < 2:
        return null_comparison(out, "fewer than 2 units in a variant")
    (mt, var_t, df_t), (mc, var_c, df_c) = t_est, c_est
    if var_t is None or var_c is None:
        return null_comparison(out, ONE_GROUP)
    d = mt - mc
    if var_t + var_c == 0:
        out.update(absolute={"estimate": d, "ci": None}, relative=relative(d, mc, mt, var_t, var_c))
        out.update(statistic=None, p_value=None, chance_to_win=None, sequential_p_value=None)
        out["reason"] = "no variance in either variant"
        return out
    se = math.sqrt(var_t + var_c)
    df = (var_t + var_c) ** 2 / (var_t**2 / df_t + var_c**2 / df_c)
    statistic = d / se
    half = stats.t.ppf(0.975, df) * se
    out.update(absolute={"estimate": d, "ci": [d - half, d + half]}, relative=relative(d, mc, mt, var_t, var_c))
    out.update(statistic=statistic, p_value=float(2 * stats.t.sf(abs(statistic), df)))
    out["chance_to_win"] = float(stats.norm.cdf(statistic))
    out["sequential_p_value"] = sequential(out["relative"], d, var_t + var_c, mc, tau2)
    out["reason"] = None if out["relative"]["estimate"] is not None else out["relative"]["reason"]
    return out


def case_quantile(name, arms, q, weights=None, alpha=0.05, tau2=0.01):
    """`arms`: per variant, (units, values, each value's unit group)."""
    keys = variant_keys(len(arms))
    sketches = [Sketch(v, g) for _, v, g in arms]
    built = [variant_quantile(k, u, s, q) for k, (u, _, _), s in zip(keys, arms, sketches)]
    variants = [v for v, _ in built]
    comparisons = [compare_quantile(v, variants[0], e, built[0][1], tau2) for v, e in built[1:]]
    finish(comparisons, alpha)
    inputs = [
        # "bin,group,events" per cell, space-separated: compact.
        {"units": u, "cells": " ".join(f"{b},{g},{c}" for (b, g), c in s.cells)}
        for (u, _, _), s in zip(arms, sketches)
    ]
    return case(name, "quantile", inputs, variants, comparisons, [u for u, _, _ in arms], weights, alpha, tau2, level=q)


def latencies(units, median_ms, spread=0.5, per_unit=2.0, scale=1.0, rounded=True):
    """(units, values, groups): each unit sends 1 + Poisson(per_unit - 1)
    values around its own level (lognormal), as response times do."""
    level = QRNG.lognormal(math.log(median_ms), spread, units)
    k = QRNG.poisson(per_unit - 1, units) + 1
    groups = QRNG.integers(0, GROUPS, units)
    owner = np.repeat(np.arange(units), k)
    values = level[owner] * QRNG.lognormal(0, spread, int(k.sum())) * scale
    if rounded:
        values = np.round(values)
    return units, values, groups[owner]


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def served_latencies(key, units, median_ms, scale=1.0):
    """Per unit `{key}-{i}` (the ids the black-box test sends), its
    response times; the groups are abacus's hash of those ids."""
    level = QRNG.lognormal(math.log(median_ms), 0.5, units)
    per_unit = [np.round(level[i] * QRNG.lognormal(0, 0.4, QRNG.poisson(1.5) + 1) * scale) for i in range(units)]
    groups = [fnv1a(f"{key}-{i}") % GROUPS for i in range(units)]
    values = np.concatenate(per_unit)
    owners = np.concatenate([[g] * len(v) for g, v in zip(groups, per_unit)])
    return (units, values, owners), [[float(x) for x in v] for v in per_unit]


def quantile_cases():
    out = []
    control, control_units = served_latencies("control", 150, 120)
    treatment, treatment_units = served_latencies("t1", 150, 120, scale=1.2)
    case = case_quantile("quantile served p90", [control, treatment], 0.9)
    case["per_unit"] = [control_units, treatment_units]
    out.append(case)
    levels = [(q, None) for q in (0.5, 0.9, 0.95, 0.99)] + [(q, 5) for q in (0.25, 0.75)]
    for q, first in levels:
        scenarios = lambda: [
            ("equal", [latencies(300, 120), latencies(300, 120)]),
            ("slower", [latencies(300, 120), latencies(300, 120, scale=1.15)]),
            ("faster unequal", [latencies(200, 200), latencies(400, 200, scale=0.85)]),
            ("three arms", [latencies(250, 80), latencies(250, 80, scale=1.05), latencies(250, 80, scale=0.9)]),
            ("one event per unit", [latencies(400, 50, per_unit=1.0), latencies(400, 50, per_unit=1.0, scale=1.1)]),
            ("heavy users", [latencies(120, 300, per_unit=6.0), latencies(120, 300, per_unit=6.0, scale=1.2)]),
            ("fractional values", [latencies(250, 3.5, rounded=False), latencies(250, 3.5, rounded=False, scale=1.08)]),
            ("wide spread", [latencies(300, 40, spread=1.2), latencies(300, 40, spread=1.2, scale=1.3)]),
        ]
        for name, arms in scenarios()[:first]:
            out.append(case_quantile(f"quantile p{round(q * 100)} {name}", arms, q))
    # Signs, zeros and degenerate inputs.
    signed = lambda n, shift: (n, QRNG.normal(shift, 50, n), QRNG.integers(0, GROUPS, n))
    out.append(case_quantile("quantile p50 negative and positive", [signed(300, 0), signed(300, 10)], 0.5))
    out.append(case_quantile("quantile p10 negative and positive", [signed(300, -20), signed(300, -5)], 0.1))
    zeros = lambda n, share: (n, np.where(QRNG.random(n) < share, 0.0, np.round(QRNG.exponential(30, n))), QRNG.integers(0, GROUPS, n))
    out.append(case_quantile("quantile p50 many zeros", [zeros(300, 0.6), zeros(300, 0.45)], 0.5))
    same = (50, np.full(80, 250.0), QRNG.integers(0, GROUPS, 80))
    out.append(case_quantile("quantile one value everywhere", [same, same], 0.9))
    out.append(case_quantile("quantile no values in the treatment", [latencies(100, 120), (30, np.array([]), np.array([], dtype=int))], 0.9))
    out.append(case_quantile("quantile no units", [(0, np.array([]), np.array([], dtype=int)), latencies(100, 120)], 0.9))
    out.append(case_quantile("quantile one unit", [(1, np.array([100.0, 140.0]), np.array([3, 3])), latencies(100, 120)], 0.9))
    out.append(case_quantile("quantile values from one group", [latencies(100, 120), (10, np.array([90.0, 130.0, 170.0]), np.array([4, 4, 4]))], 0.5))
    out.append(case_quantile("quantile p99 of few events", [latencies(20, 120), latencies(20, 120, scale=1.3)], 0.99))
    out.append(case_quantile("quantile p1 of few events", [latencies(20, 120), latencies(20, 120, scale=1.3)], 0.01))
    out.append(case_quantile("quantile alpha 0.01 tau2 0.05", [latencies(400, 120), latencies(400, 120, scale=1.1)], 0.9, alpha=0.01, tau2=0.05))
    out.append(case_quantile("quantile weights 30/70", [latencies(150, 120), latencies(350, 120)], 0.5, weights=[0.3, 0.7]))
    out.append(case_quantile("quantile p75", [latencies(300, 120), latencies(300, 120, scale=1.1)], 0.75))
    return out


# Model experiments (docs/models.md), from their own generator so the
# cases above keep their draws. Binary classifiers' pairs (score, true
# label) scored with the textbook binary formulas, which abacus computes
# another way (from the predicted label and its probability); and the
# population stability index on the documented bins.
MRNG = np.random.default_rng(20261202)


def model_pairs(name, n, sharpness, shift=0.0):
    """n scores and true labels: a label is 1 with probability
    score ** sharpness (1: calibrated), the scores moved by `shift`."""
    scores = MRNG.beta(2.0, 2.0, n)
    truth = (MRNG.random(n) < scores ** sharpness).astype(int)
    scores = np.clip(scores + shift, 0.0, 1.0)
    predicted = (scores >= 0.5).astype(int)
    correct = predicted == truth
    # The probability given the true class, clipped to [1e-15, 1 - 1e-15]
    # (a confident miss costs ~34.5).
    eps = 1e-15
    p_true = np.clip(np.where(truth == 1, scores, 1 - scores), eps, 1 - eps)
    log_loss = float(np.mean(-np.log(p_true)))
    brier = float(np.mean((scores - truth) ** 2))
    # Calibration on the predicted label's probability, ten bins.
    q = np.where(predicted == 1, scores, 1 - scores)
    bins = np.minimum((q * 10).astype(int), 9)
    table = []
    ece = 0.0
    for b in range(10):
        inside = bins == b
        k = int(inside.sum())
        table.append({"outcomes": k, "correct": int(correct[inside].sum())})
        if k:
            ece += abs(correct[inside].mean() - q[inside].mean()) * k
    return {
        "name": f"model pairs {name}",
        "kind": "pairs",
        "pairs": [[float(s), int(t)] for s, t in zip(scores, truth)],
        "accuracy": float(correct.mean()),
        "log_loss": log_loss,
        "brier": brier,
        "calibration": table,
        "expected_calibration_error": ece / n,
    }


def psi_case(name, baseline, current):
    """PSI of scores binned in 20 equal bins, grouped by the baseline's
    deciles (each decile's upper bin: the first where the cumulative share
    reaches k/10), each share floored at 1e-4."""
    bin_of = lambda s: np.clip(np.floor(np.asarray(s) * 20).astype(int), 0, 19)
    b_bins, c_bins = bin_of(baseline), bin_of(current)
    counts = np.bincount(b_bins, minlength=20)
    cumulative = np.cumsum(counts)
    edges = sorted({int(np.argmax(cumulative * 10 >= k * len(baseline))) for k in range(1, 11)})
    group = lambda bins: np.minimum(np.searchsorted(edges, bins, side="left"), len(edges) - 1)
    shares = lambda bins: np.maximum(np.bincount(group(bins), minlength=len(edges)) / len(bins), 1e-4)
    b, c = shares(b_bins), shares(c_bins)
    return {
        "name": f"model psi {name}",
        "kind": "psi",
        "baseline": [float(x) for x in baseline],
        "current": [float(x) for x in current],
        "psi": float(np.sum((c - b) * np.log(c / b))),
    }


def model_cases():
    out = [
        model_pairs("calibrated", 2000, 1.0),
        model_pairs("overconfident", 2000, 3.0),
        model_pairs("shifted", 1500, 1.0, shift=0.15),
        model_pairs("small", 40, 1.0),
    ]
    beta = lambda a, b, n: MRNG.beta(a, b, n)
    for name, baseline, current in [
        ("same distribution", beta(2, 2, 3000), beta(2, 2, 3000)),
        ("moderate shift", beta(2, 2, 3000), beta(2.6, 2, 3000)),
        ("large shift", beta(2, 5, 3000), beta(5, 2, 3000)),
        ("narrow baseline", beta(30, 30, 2000), beta(2, 2, 2000)),
        ("empty bins now", beta(2, 2, 1000), MRNG.uniform(0.0, 0.3, 1000)),
    ]:
        out.append(psi_case(name, baseline, current))
    return out


def main():
    cases = []
    # Binomial: small and large n, unequal sizes, zero conversions,
    # identical variants, 3+ variants, degenerate inputs.
    b = [
        ("small equal", [(20, 3), (20, 7)]),
        ("small unequal", [(15, 2), (40, 11)]),
        ("tiny", [(5, 1), (6, 3)]),
        ("medium", [(1000, 100), (1000, 120)]),
        ("medium unequal", [(800, 64), (1200, 118)]),
        ("large", [(100_000, 10_000), (100_000, 10_300)]),
        ("large small effect", [(500_000, 25_000), (500_000, 25_200)]),
        ("huge", [(1_000_000, 100_000), (1_000_000, 101_000)]),
        ("identical", [(5000, 500), (5000, 500)]),
        ("identical large", [(200_000, 31_000), (200_000, 31_000)]),
        ("zero conversions control", [(1000, 0), (1000, 12)]),
        ("zero conversions treatment", [(1000, 9), (1000, 0)]),
        ("zero conversions both", [(1000, 0), (1000, 0)]),
        ("all converted", [(300, 300), (300, 300)]),
        ("all converted one", [(300, 300), (300, 280)]),
        ("rare events", [(50_000, 5), (50_000, 14)]),
        ("high rate", [(2000, 1900), (2000, 1950)]),
        ("three variants", [(3000, 300), (3000, 330), (3000, 360)]),
        ("four variants", [(2000, 200), (2100, 190), (1900, 240), (2000, 205)]),
        ("five variants mixed", [(10_000, 1000), (10_000, 1000), (10_000, 1100), (10_000, 950), (10_000, 1025)]),
        ("one unit control", [(1, 1), (100, 10)]),
        ("empty control", [(0, 0), (100, 10)]),
        ("empty treatment", [(100, 10), (0, 0)]),
        ("strong effect", [(10_000, 500), (10_000, 900)]),
        ("negative effect", [(10_000, 900), (10_000, 500)]),
    ]
    for name, arms in b:
        cases.append(case_binomial("binomial " + name, arms))
    cases.append(case_binomial("binomial srm 50/50 skewed", [(10_000, 1000), (10_600, 1060)]))
    cases.append(case_binomial("binomial weights 20/80", [(2000, 200), (8000, 840)], weights=[0.2, 0.8]))
    cases.append(case_binomial("binomial weights 3 way", [(5000, 500), (3000, 310), (2000, 230)], weights=[0.5, 0.3, 0.2]))
    cases.append(case_binomial("binomial alpha 0.01", [(4000, 400), (4000, 470), (4000, 430)], alpha=0.01))
    cases.append(case_binomial("binomial tau2 0.001", [(20_000, 2000), (20_000, 2150)], tau2=0.001))
    cases.append(case_binomial("binomial tau2 0.1", [(20_000, 2000), (20_000, 2150)], tau2=0.1))

    m = [
        ("small", [revenue(30, 0.4, 20), revenue(30, 0.5, 22)]),
        ("small unequal", [revenue(12, 0.5, 10), revenue(45, 0.5, 12)]),
        ("tiny", [np.array([1.0, 3.0]), np.array([2.0, 2.5, 7.0])]),
        ("medium", [revenue(2000, 0.1, 30), revenue(2000, 0.11, 31)]),
        ("medium unequal", [revenue(1500, 0.1, 30), revenue(2500, 0.12, 30)]),
        ("large", [revenue(200_000, 0.05, 40), revenue(200_000, 0.051, 41)]),
        ("huge", [revenue(1_000_000, 0.03, 25), revenue(1_000_000, 0.031, 25)]),
        ("counts", [counts(5000, 2.0), counts(5000, 2.1)]),
        ("counts large", [counts(300_000, 0.7), counts(300_000, 0.7)]),
        ("identical", [np.tile([0.0, 1.0, 5.0, 2.0], 250), np.tile([0.0, 1.0, 5.0, 2.0], 250)]),
        ("zero control", [np.zeros(500), revenue(500, 0.1, 10)]),
        ("zero both", [np.zeros(500), np.zeros(500)]),
        ("constant both", [np.full(100, 3.0), np.full(100, 3.0)]),
        ("constant control", [np.full(100, 3.0), counts(100, 3.0)]),
        ("normal values", [RNG.normal(100, 15, 4000), RNG.normal(101, 15, 4000)]),
        ("unequal variances", [RNG.normal(50, 5, 3000), RNG.normal(51, 25, 1000)]),
        ("negative values", [RNG.normal(-2, 4, 2500), RNG.normal(-1.8, 4, 2500)]),
        ("three variants", [revenue(3000, 0.2, 15), revenue(3000, 0.22, 15), revenue(3000, 0.2, 17)]),
        ("four variants", [counts(4000, 1.0), counts(4000, 1.05), counts(4000, 0.95), counts(4000, 1.2)]),
        ("one unit treatment", [revenue(100, 0.3, 5), np.array([4.0])]),
        ("empty treatment", [revenue(100, 0.3, 5), np.array([])]),
        ("strong effect", [RNG.normal(10, 2, 2000), RNG.normal(11, 2, 2000)]),
        ("dwell times", [RNG.exponential(30_000, 8000), RNG.exponential(31_000, 8000)]),
    ]
    for name, arms in m:
        cases.append(case_mean("mean " + name, arms))
    cases.append(case_mean("mean weights 30/70", [revenue(3000, 0.1, 20), revenue(7000, 0.1, 21)], weights=[0.3, 0.7]))
    cases.append(case_mean("mean srm", [counts(10_000, 1.0), counts(9_500, 1.0)]))
    cases.append(case_mean("mean tau2 0.05", [RNG.normal(10, 3, 5000), RNG.normal(10.2, 3, 5000)], tau2=0.05))
    cases.append(case_mean("mean alpha 0.1 three", [counts(2000, 1.0), counts(2000, 1.1), counts(2000, 1.08)], alpha=0.1))

    # Families of treatments x metrics under each correction: one member;
    # several metrics of one treatment; several of each; a member without
    # a p-value; tied p-values; p-values near 1; 19 treatments.
    families = [
        ("one member", [("binomial", [(4000, 400), (4000, 455)])]),
        ("three metrics", [
            ("binomial", [(5000, 500), (5000, 560)]),
            ("mean", [revenue(5000, 0.1, 30), revenue(5000, 0.11, 31)]),
            ("mean", [counts(5000, 2.0), counts(5000, 2.06)]),
        ]),
        ("two by four", [
            ("binomial", [(3000, 300), (3000, 345), (3000, 310), (3000, 280), (3000, 330)]),
            ("mean", [RNG.normal(10, 3, 1500), RNG.normal(10.4, 3, 1500), RNG.normal(10, 3, 1500),
                      RNG.normal(9.8, 3, 1500), RNG.normal(10.1, 3, 1500)]),
        ]),
        # No p-value at all; a fixed-horizon one without an always-valid one
        # (the control is zero).
        ("a member without a p-value", [
            ("binomial", [(1000, 0), (1000, 0)]),
            ("binomial", [(1000, 0), (1000, 12)]),
            ("binomial", [(2000, 200), (2000, 250)]),
            ("mean", [counts(2000, 1.0), counts(2000, 1.12)]),
        ]),
        ("ties", [
            ("binomial", [(2000, 200), (2000, 240)]),
            ("binomial", [(2000, 200), (2000, 240)]),
            ("binomial", [(2000, 200), (2000, 240)]),
        ]),
        ("near one", [
            ("binomial", [(5000, 500), (5000, 500)]),
            ("binomial", [(5000, 500), (5000, 501)]),
            ("mean", [np.tile([0.0, 1.0, 5.0, 2.0], 250), np.tile([0.0, 1.0, 5.0, 2.0], 250)]),
        ]),
        ("mixed strengths", [
            ("binomial", [(20_000, 2000), (20_000, 2300)]),
            ("binomial", [(20_000, 1000), (20_000, 1040)]),
            ("mean", [RNG.normal(50, 10, 4000), RNG.normal(50.5, 10, 4000)]),
            ("mean", [RNG.normal(50, 10, 4000), RNG.normal(50.05, 10, 4000)]),
        ]),
        # The black-box test serves this one over HTTP (tests/it/results.rs).
        ("served", [
            ("binomial", [(300, 30), (300, 45), (300, 52)]),
            ("binomial", [(300, 60), (300, 66), (300, 90)]),
        ]),
        ("nineteen treatments", [
            ("binomial", [(1000, 100)] + [(1000, 100 + 3 * i) for i in range(1, 20)]),
            ("binomial", [(1000, 500)] + [(1000, 500 + (-1) ** i * 4 * i) for i in range(1, 20)]),
        ]),
    ]
    for name, metrics in families:
        for correction in (None, "holm", "bh", "none"):
            cases.append(case_family(name, metrics, correction, alpha=0.1 if name == "ties" else 0.05))

    # Ratio metrics: clicks per session, revenue per session, dwell per
    # click; units without a denominator; degenerate inputs.
    r = [
        ("ctr small", [clicks(40, 3.0, 0.2), clicks(40, 3.0, 0.25)]),
        ("ctr medium", [clicks(2000, 3.0, 0.10), clicks(2000, 3.0, 0.11)]),
        ("ctr large", [clicks(100_000, 2.5, 0.05), clicks(100_000, 2.5, 0.051)]),
        ("ctr unequal", [clicks(1500, 2.0, 0.3), clicks(3500, 2.0, 0.32)]),
        ("ctr three variants", [clicks(3000, 4.0, 0.1), clicks(3000, 4.0, 0.12), clicks(3000, 4.0, 0.095)]),
        ("ctr five variants", [clicks(2000, 1.5, 0.2)] + [clicks(2000, 1.5, 0.2 + 0.01 * i) for i in range(1, 5)]),
        ("revenue per session", [revenue_per_session(3000, 2.0, 0.05, 40), revenue_per_session(3000, 2.0, 0.055, 40)]),
        ("revenue per session large", [revenue_per_session(50_000, 1.5, 0.03, 25), revenue_per_session(50_000, 1.5, 0.03, 26)]),
        ("dwell per click", [(RNG.gamma(2.0, 15_000, 4000), RNG.poisson(1.5, 4000).astype(float) + 1),
                             (RNG.gamma(2.0, 15_500, 4000), RNG.poisson(1.5, 4000).astype(float) + 1)]),
        ("identical", [(np.tile([0.0, 1.0, 2.0, 1.0], 250), np.tile([1.0, 2.0, 3.0, 1.0], 250)),
                       (np.tile([0.0, 1.0, 2.0, 1.0], 250), np.tile([1.0, 2.0, 3.0, 1.0], 250))]),
        ("constant ratio", [(np.full(100, 2.0), np.full(100, 1.0)), (np.arange(1.0, 101.0) * 2, np.arange(1.0, 101.0))]),
        ("zero numerator control", [(np.zeros(500), RNG.poisson(2.0, 500).astype(float)), clicks(500, 2.0, 0.1)]),
        ("zero denominator control", [(np.zeros(300), np.zeros(300)), clicks(300, 2.0, 0.1)]),
        ("zero denominator both", [(np.zeros(300), np.zeros(300)), (np.zeros(300), np.zeros(300))]),
        ("one unit treatment", [clicks(200, 3.0, 0.2), (np.array([1.0]), np.array([3.0]))]),
        ("empty treatment", [clicks(200, 3.0, 0.2), (np.array([]), np.array([]))]),
        ("strong effect", [clicks(5000, 3.0, 0.10), clicks(5000, 3.0, 0.13)]),
        ("negative effect", [clicks(5000, 3.0, 0.13), clicks(5000, 3.0, 0.10)]),
        ("negative numerators", [(RNG.normal(-1.0, 2.0, 2000), RNG.poisson(2.0, 2000).astype(float) + 1),
                                 (RNG.normal(-0.8, 2.0, 2000), RNG.poisson(2.0, 2000).astype(float) + 1)]),
    ]
    for name, arms in r:
        cases.append(case_ratio("ratio " + name, arms))
    cases.append(case_ratio("ratio weights 30/70", [clicks(3000, 2.0, 0.1), clicks(7000, 2.0, 0.1)], weights=[0.3, 0.7]))
    cases.append(case_ratio("ratio alpha 0.01 tau2 0.05", [clicks(8000, 2.0, 0.1), clicks(8000, 2.0, 0.108)], alpha=0.01, tau2=0.05))

    # Capped means: each unit's value winsorised at an absolute cap.
    for name, cap, arms in [
        ("revenue at 100", 100.0, [revenue(5000, 0.1, 60), revenue(5000, 0.11, 62)]),
        ("revenue at 10", 10.0, [revenue(5000, 0.1, 60), revenue(5000, 0.11, 62)]),
        ("counts at 3", 3.0, [counts(4000, 2.0), counts(4000, 2.1)]),
        ("dwell at 60s", 60_000.0, [RNG.exponential(30_000, 3000), RNG.exponential(31_000, 3000)]),
        ("everyone capped", 1.0, [counts(1000, 20.0), counts(1000, 21.0)]),
        ("negative below the cap", 5.0, [RNG.normal(0, 10, 2000), RNG.normal(0.5, 10, 2000)]),
    ]:
        capped = [np.minimum(a, cap) for a in arms]
        case = case_mean(f"mean capped {name}", capped)
        case["cap"] = cap
        cases.append(case)

    # Served over HTTP by tests/it/results.rs, which sends these per-unit
    # values as events: taps per visit, and purchases capped at 20 then 10.
    served = [clicks(30, 3.0, 0.3), clicks(30, 3.0, 0.45)]
    case = case_ratio("ratio served", served)
    case["per_unit"] = [[[int(a), int(b)] for a, b in zip(x, d)] for x, d in served]
    cases.append(case)
    spend = [RNG.integers(0, 4, 30) * RNG.integers(1, 15, 30), RNG.integers(0, 4, 30) * RNG.integers(1, 16, 30)]
    for cap in (20.0, 10.0):
        case = case_mean(f"mean capped served at {cap:g}", [np.minimum(a.astype(float), cap) for a in spend])
        case["cap"] = cap
        case["per_unit"] = [[int(v) for v in a] for a in spend]
        cases.append(case)

    # CUPED: correlated covariates, none at all, a constant one, revenue
    # with a pre-period, several variants, degenerate inputs.
    cu = [
        ("rho 0.5", [correlated(2000, 10, 0.5), correlated(2000, 10, 0.5, lift=0.1)]),
        ("rho 0.9", [correlated(2000, 10, 0.9), correlated(2000, 10, 0.9, lift=0.05)]),
        ("rho 0.2 large", [correlated(50_000, 3, 0.2), correlated(50_000, 3, 0.2, lift=0.01)]),
        ("negative rho", [correlated(3000, 5, -0.6), correlated(3000, 5, -0.6, lift=0.08)]),
        ("uncorrelated", [correlated(3000, 5, 0.0), correlated(3000, 5, 0.0, lift=0.05)]),
        ("small", [correlated(25, 4, 0.7), correlated(30, 4, 0.7, lift=0.5)]),
        ("unequal", [correlated(1200, 8, 0.6), correlated(2800, 8, 0.6, lift=0.1)]),
        ("three variants", [correlated(2000, 6, 0.7), correlated(2000, 6, 0.7, lift=0.1), correlated(2000, 6, 0.7, lift=-0.05)]),
        ("revenue", [spenders(5000, 0.1, 40), spenders(5000, 0.1, 40, lift=1.08)]),
        ("revenue large", [spenders(100_000, 0.05, 30), spenders(100_000, 0.05, 30, lift=1.03)]),
        ("constant covariate", [(counts(1000, 2.0), np.zeros(1000)), (counts(1000, 2.2), np.zeros(1000))]),
        ("one unit treatment", [correlated(100, 4, 0.5), (np.array([4.5]), np.array([4.0]))]),
        ("empty treatment", [correlated(100, 4, 0.5), (np.array([]), np.array([]))]),
        ("zero both", [(np.zeros(300), counts(300, 1.0)), (np.zeros(300), counts(300, 1.0))]),
    ]
    for name, arms in cu:
        cases.append(case_cuped("cuped " + name, arms))
    cases.append(case_cuped("cuped alpha 0.01 tau2 0.05", [correlated(4000, 10, 0.6), correlated(4000, 10, 0.6, lift=0.06)], alpha=0.01, tau2=0.05))
    served = [spenders(40, 0.5, 20), spenders(40, 0.5, 20, lift=1.3)]
    case = case_cuped("cuped served", [(np.round(x), np.round(c)) for x, c in served])
    case["per_unit"] = [[[int(a), int(b)] for a, b in zip(np.round(x), np.round(c))] for x, c in served]
    cases.append(case)

    # Families with ratio metrics beside the others.
    for name, metrics in [
        ("with ratios", [
            ("binomial", [(4000, 400), (4000, 450)]),
            ("ratio", [clicks(4000, 3.0, 0.1), clicks(4000, 3.0, 0.106)]),
            ("ratio", [revenue_per_session(4000, 2.0, 0.05, 30), revenue_per_session(4000, 2.0, 0.05, 33)]),
        ]),
    ]:
        for correction in (None, "holm", "bh", "none"):
            cases.append(case_family(name, metrics, correction))

    # Quantile metrics, from their own generator so the cases above keep
    # their draws.
    cases.extend(quantile_cases())
    for name, metrics in [
        ("with a quantile", [
            ("binomial", [(4000, 400), (4000, 450)]),
            ("quantile", [latencies(300, 120), latencies(300, 120, scale=1.12)]),
        ]),
    ]:
        for correction in (None, "holm", "bh", "none"):
            cases.append(case_family(name, metrics, correction))

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.json")
    with open(out, "w") as f:
        models = model_cases()
        document = {"generated_by": "tests/stats/reference.py", "cases": cases, "models": models}
        json.dump(document, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"{len(cases)} cases and {len(models)} model cases written to {out}")


if __name__ == "__main__":
    main()
