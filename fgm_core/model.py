"""The f-GM model: three networks, the Gaussian latent/observation model, and the objective J.

Everything here works in *model units* (data mapped by the dataset's :class:`Scaling`);
:class:`fgm_core.run.Run` converts to and from data units. Notation follows
``docs/math.md``: Q(x,z) = p_D(x) q(z|x) on the data side, P(x,z) = p(z) p(x|z) on the model
side, s = log Q/P for the density critic, V the raw output of a free critic.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fgm_core.components import LOG_2PI, Divergence, Networks, Prior, StandardNormal
from fgm_core.errors import FGMError

#: density critic, ``rescale``: a step is rescaled when its largest per-sample gradient weight
#: lies outside [e^-20, e^20] (below, float32 gradients underflow or drown in Adam's epsilon;
#: above, the exponentials in T and f*(T) clamp at ``divergence.max_exp``)
RESCALE_LOG_BOUND = 20.0


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Diagonal Gaussian log density, summed over all but the batch dimension. A ``log_std``
    without the batch dimension (one per data dimension) is shared by every row: its
    normaliser is summed once."""
    r = (x - mean) * torch.exp(-log_std)
    if log_std.dim() < x.dim():
        norm = log_std.expand(x.shape[1:]).sum() + 0.5 * LOG_2PI * math.prod(x.shape[1:])
        return -0.5 * r.square().flatten(1).sum(1) - norm
    return (-0.5 * (LOG_2PI + r * r) - log_std).flatten(1).sum(1)


@dataclass
class Losses:
    """One side's loss plus the statistics the trainer logs (all detached floats or tensors)."""

    loss: Tensor
    objective: Tensor | None  # J on this batch (the divergence estimate); None where the model side is not computed
    critic_data: Tensor  # mean T on data-side samples
    critic_model: Tensor | None  # mean T on model-side samples


class FGMModel(nn.Module):
    """Encoder q(z|x), generator p(x|z), critic, latent prior p(z), and the f-GM objective for
    one divergence.

    ``critic_form`` is ``density`` (the critic is a density estimator l(x) and T = f'(Q/P) is
    computed from the log ratio s), ``joint`` (free critic V(x, z)) or ``marginal`` (V(x),
    the f-GAN objective). Switching divergence or critic form changes no network code.
    """

    def __init__(
        self,
        networks: Networks,
        divergence: Divergence,
        *,
        critic_form: str,
        data_shape: tuple[int, ...],
        latent_dim: int,
        generator: str = "gaussian",
        sigma: float = 0.1,
        learn_sigma: bool = True,
        sigma_per_dim: bool = True,
        min_sigma: float = 1e-3,
        generator_loss: str = "saddle",
        gradient_penalty: float = 0.0,
        density_estimator: bool = True,
        prior: Prior | None = None,
        warmup_divergence: Divergence | None = None,
        critic_divergence: Divergence | None = None,
        rescale: bool = True,
    ) -> None:
        super().__init__()
        #: density critic: step along J's gradient rescaled in log space where every sample's
        #: weight under- or overflows (:meth:`_rescaled`); ``rescaled`` counts such losses
        self.rescale = rescale
        self.rescaled = 0
        #: the f whose bound trains the density estimator (None: the divergence in use); every f
        #: has the same optimum l = log p_D, so a well-conditioned one can train it for any model
        self.critic_divergence = critic_divergence
        #: the run's divergence; ``divergence`` is the one in use (kl during a warm-up)
        self.main_divergence = divergence
        self.warmup_divergence = warmup_divergence
        self.encoder = networks.encoder
        self.decoder = networks.decoder
        self.critic = networks.critic
        #: p(z); its parameters (if any) train with the encoder and generator
        self.prior = prior if prior is not None else StandardNormal(latent_dim)
        self.divergence = divergence
        self.critic_form = critic_form
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        self.generator = generator
        self.generator_loss_kind = generator_loss
        self.gradient_penalty = gradient_penalty
        self.min_sigma = min_sigma
        # False when the critic is never trained (n_critic = 0, the plain VAE): no log p_D(x)
        self.density_estimator = density_estimator
        shape = self.data_shape if sigma_per_dim else (1,) * len(self.data_shape)
        # sigma = min_sigma + exp(rho): positive, moves in log space, never below min_sigma.
        rho0 = math.log(max(sigma - min_sigma, 1e-6))
        rho = torch.full(shape, rho0)
        if learn_sigma and generator == "gaussian":
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)

    def use_warmup(self, on: bool) -> None:
        """Train with the warm-up divergence (kl) instead of the run's own, or back."""
        self.divergence = self.warmup_divergence if on and self.warmup_divergence is not None else self.main_divergence

    # ------------------------------------------------------------------ the probabilistic model
    @property
    def log_sigma(self) -> Tensor:
        return torch.log(self.min_sigma + torch.exp(self.rho))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x)
        return mu, logvar.clamp(-30.0, 20.0)

    def posterior_sample(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z ~ q(z|x) by reparameterisation, and log q(z|x)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        return z, gaussian_log_prob(z, mu, 0.5 * logvar)

    def log_q(self, z: Tensor, x: Tensor) -> Tensor:
        mu, logvar = self.encode(x)
        return gaussian_log_prob(z, mu, 0.5 * logvar)

    def log_p_x_given_z(self, x: Tensor, z: Tensor, mean: Tensor | None = None) -> Tensor:
        mean = self.decoder(z) if mean is None else mean
        return gaussian_log_prob(x, mean, self.log_sigma)

    def _ratio_terms(self, x: Tensor, z: Tensor, log_q: Tensor, mean: Tensor | None = None) -> Tensor:
        """log q(z|x) - log p(z) - log p(x|z): the log ratio s without the estimator's l(x)."""
        return log_q - self.prior.log_prob(z) - self.log_p_x_given_z(x, z, mean=mean)

    def generate(self, z: Tensor, eps: Tensor | None) -> Tensor:
        """x ~ p(x|z): mean plus sigma*eps (the mean alone for a deterministic generator)."""
        return self._generate(z, eps)[0]

    def _generate(self, z: Tensor, eps: Tensor | None) -> tuple[Tensor, Tensor]:
        mean = self.decoder(z)
        if self.generator == "deterministic" or eps is None:
            return mean, mean
        return mean + torch.exp(self.log_sigma) * eps, mean

    # ------------------------------------------------------------------ critic values
    def _sides(
        self, x_data: Tensor, noise: dict[str, Tensor], critic_step: bool
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Critic inputs on the data side (Q) and the model side (P), and the samples.

        Density critic: the log ratio s = l(x) + log q(z|x) - log p(z) - log p(x|z) on both
        sides; free critics: the raw outputs V. For the critic step everything but the
        critic runs without gradients.
        """
        with torch.no_grad() if critic_step else nullcontext():
            z_p = self.prior.sample(noise["z"], noise.get("z_u"))
            x_p, mean_p = self._generate(z_p, noise.get("x_eps"))
            samples = {"x_p": x_p, "z_p": z_p}
            if self.critic_form != "marginal":
                samples["z_q"], log_q_data = self.posterior_sample(x_data, noise["z_eps"])
        z_q = samples.get("z_q")
        joint = self.critic_form == "joint"
        # one critic call on both batches (critics hold no batch statistics)
        v = self.critic(torch.cat([x_data, x_p]), torch.cat([z_q, z_p]) if joint else None).float()  # type: ignore[list-item]
        v_q, v_p = v[: x_data.shape[0]], v[x_data.shape[0] :]
        if self.critic_form == "density":
            with torch.no_grad() if critic_step else nullcontext():
                extra_q = self._ratio_terms(x_data, z_q, log_q_data)  # type: ignore[arg-type]
                extra_p = self._ratio_terms(x_p, z_p, self.log_q(z_p, x_p), mean=mean_p)
            v_q, v_p = v_q + extra_q.float(), v_p + extra_p.float()
        return v_q, v_p, samples

    def _T_and_C(self, a_q: Tensor, a_p: Tensor, d: Divergence | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """T on the data side, T and f*(T) on the model side (under ``d``, default the divergence in use)."""
        d = d or self.divergence
        if self.critic_form == "density":
            return d.T(a_q), d.T(a_p), d.C(a_p)
        return d.activation(a_q), d.activation(a_p), d.conj_act(a_p)

    # ------------------------------------------------------------------ the two losses
    def critic_loss(self, x_data: Tensor, noise: dict[str, Tensor]) -> Losses:
        """-J for the critic (or density estimator) step; the other networks are held fixed."""
        a_q, a_p, samples = self._sides(x_data, noise, critic_step=True)
        d = self.critic_divergence or self.divergence
        t_q, t_p, c_p = self._T_and_C(a_q, a_p, d)
        objective = t_q.mean() - c_p.mean()
        scaled = self._rescaled(d, a_q, a_p, model_term="C")
        loss = -objective if scaled is None else -scaled
        if self.gradient_penalty > 0:
            joint = self.critic_form == "joint"
            loss = loss + self.gradient_penalty * self._gradient_penalty(
                x_data,
                samples["x_p"],
                samples.get("z_q") if joint else None,
                samples["z_p"] if joint else None,
                noise["gp"],
            )
        return Losses(loss, objective.detach(), t_q.detach().mean(), t_p.detach().mean())

    def generator_loss(self, x_data: Tensor, noise: dict[str, Tensor]) -> Losses:
        """J for the encoder and generator step (the critic's parameters are not stepped).

        ``non_saturating`` replaces -E_P[f*(T)] by -E_P[T]. A divergence whose model-side
        term does not depend on (theta, phi) in expectation (``model_term_constant``, e.g.
        kl: E_P[e^s] = integral of exp(l)) drops that term, with either option, and computes
        the data side only: with kl this is exactly the VAE update, at the VAE's cost.
        """
        if not self.generator_uses_model_side:
            return self._data_side_loss(x_data, noise)
        a_q, a_p, samples = self._sides(x_data, noise, critic_step=False)
        t_q, t_p, c_p = self._T_and_C(a_q, a_p)
        objective = t_q.mean() - c_p.mean()
        non_saturating = self.generator_loss_kind == "non_saturating"
        loss = t_q.mean() - t_p.mean() if non_saturating else objective
        scaled = self._rescaled(self.divergence, a_q, a_p, model_term="T" if non_saturating else "C")
        loss = loss if scaled is None else scaled
        if self.critic_form == "marginal":
            loss = loss + self._encoder_fit_loss(x_data, samples, noise)
        return Losses(loss, objective.detach(), t_q.detach().mean(), t_p.detach().mean())

    def _rescaled(self, d: Divergence, s_q: Tensor, s_p: Tensor, model_term: str) -> Tensor | None:
        """E_Q[T(s)] - E_P[term(s)] (term: ``C`` = f*(T), or ``T`` for the non-saturating loss)
        as a surrogate with the same gradient times e^-m, or None where no rescaling is needed.

        The gradient of J is sum_i w_i grad s_i, w = T'(s)/N on the data side and -C'(s)/M on
        the model side, C' = e^s T'. Far from the data (|s| in the thousands on images) every w
        underflows to 0 or its exponential clamps, and the step is exactly zero. Here the log
        weights come in closed form (``log_T_prime``), m is their maximum, and the surrogate
        sum_i w_i e^-m s_i (weights detached) has J's gradient direction with the largest weight
        1: dynamic loss scaling, with the scale known in log space.
        """
        if not self.rescale or self.critic_form != "density":
            return None
        s_q0, s_p0 = s_q.detach(), s_p.detach()
        lt_q, lt_p = d.log_T_prime(s_q0), d.log_T_prime(s_p0)
        if lt_q is None or lt_p is None:
            return None
        lw_q = lt_q - math.log(s_q.shape[0])
        lw_p = lt_p + (s_p0 if model_term == "C" else 0.0) - math.log(s_p.shape[0])
        m = torch.maximum(lw_q.max(), lw_p.max())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)  # one scale, one decision
        if not torch.isfinite(m) or -RESCALE_LOG_BOUND <= float(m) <= RESCALE_LOG_BOUND:
            return None
        self.rescaled += 1
        return (torch.exp(lw_q - m) * s_q).sum() - (torch.exp(lw_p - m) * s_p).sum()

    def pop_rescaled(self) -> int:
        """Losses rescaled since the last call (resets the counter)."""
        n, self.rescaled = self.rescaled, 0
        return n

    @property
    def generator_uses_model_side(self) -> bool:
        """False where the generator loss is E_Q[T(s)] alone (density critic, constant model term)."""
        return not (self.critic_form == "density" and self.divergence.model_term_constant)

    def _data_side_loss(self, x_data: Tensor, noise: dict[str, Tensor]) -> Losses:
        """E_Q[T(s)] alone: the generator loss when the model-side term is constant.
        Without a density estimator (n_critic = 0) l is taken as 0: nothing trained it."""
        z_q, log_q = self.posterior_sample(x_data, noise["z_eps"])
        s_q = self._ratio_terms(x_data, z_q, log_q).float()
        if self.density_estimator:
            with torch.no_grad():  # the critic is held fixed; l(x) carries no (theta, phi) gradient
                l_q = self.critic(x_data).float()
            s_q = s_q + l_q
        t_q = self.divergence.T(s_q)
        return Losses(t_q.mean(), None, t_q.detach().mean(), None)

    def _encoder_fit_loss(self, x_data: Tensor, samples: dict[str, Tensor], noise: dict[str, Tensor]) -> Tensor:
        """Marginal critic: J ignores the encoder, so fit it for inference on its own
        (negative ELBO w.r.t. the encoder only; latent regression for a deterministic G)."""
        if self.generator == "deterministic":
            mu, _ = self.encode(samples["x_p"].detach())
            return F.mse_loss(mu, samples["z_p"].detach(), reduction="none").flatten(1).sum(1).mean()
        z, log_q = self.posterior_sample(x_data, noise["z_eps"])
        with _frozen(self.decoder), _frozen(self.prior):
            mean = self.decoder(z)
            log_pz = self.prior.log_prob(z)
        log_px = gaussian_log_prob(x_data, mean, self.log_sigma.detach())
        return (log_q - log_pz - log_px).mean()

    def _gradient_penalty(
        self, x_q: Tensor, x_p: Tensor, z_q: Tensor | None, z_p: Tensor | None, alpha: Tensor
    ) -> Tensor:
        """WGAN-GP: (||grad critic|| - 1)^2 at random interpolates of data and model samples."""
        a = alpha.view(-1, *([1] * (x_q.dim() - 1)))
        x_hat = (a * x_q.detach() + (1 - a) * x_p.detach()).requires_grad_(True)
        inputs = [x_hat]
        if z_q is not None and z_p is not None:
            az = alpha.view(-1, 1)
            z_hat = (az * z_q.detach() + (1 - az) * z_p.detach()).requires_grad_(True)
            inputs.append(z_hat)
            out = self.critic(x_hat, z_hat)
        else:
            out = self.critic(x_hat)
        grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
        norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads) + 1e-12)  # type: ignore[arg-type]
        return ((norm - 1) ** 2).mean()

    # ------------------------------------------------------------------ likelihood (model units)
    def log_likelihood(self, x: Tensor, eps: Tensor) -> Tensor:
        """Importance-sampled log p(x) with K = eps.shape[0] encoder samples (nats, model units)."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        k = eps.shape[0]
        z = mu.unsqueeze(0) + std.unsqueeze(0) * eps  # (K, B, d)
        zf = z.reshape(-1, z.shape[-1])
        xf = x.unsqueeze(0).expand(k, *x.shape).reshape(-1, *x.shape[1:])
        log_w = (
            self.prior.log_prob(zf)
            + self.log_p_x_given_z(xf, zf)
            - gaussian_log_prob(zf, mu.repeat(k, 1), 0.5 * logvar.repeat(k, 1))
        ).view(k, -1)
        return torch.logsumexp(log_w, 0) - math.log(k)

    def log_density(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """The density estimator's log p_D(x) (model units).

        Density critic: l(x). Free critics (strictly convex f): the log ratio read back
        through (f')^{-1}, plus the model's log density, averaged over ``eps`` draws.
        """
        if not self.density_estimator:
            raise FGMError(
                "this run trained no density estimator (critic.n_critic = 0), so it has no log p_D(x)",
                "train with critic.n_critic >= 1, or use the model likelihood (log_likelihood / fgm score)",
            )
        if self.critic_form == "density":
            return self.critic(x).float()
        if eps is None:
            raise ValueError("free critics need latent noise eps (K, B, d) for log_density")
        d = self.divergence
        if self.critic_form == "marginal":
            return d.inverse_f_prime_log(d.activation(self.critic(x).float())) + self.log_likelihood(x, eps)
        mu, logvar = self.encode(x)
        k = eps.shape[0]
        z = (mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps).reshape(-1, mu.shape[-1])
        xf = x.unsqueeze(0).expand(k, *x.shape).reshape(-1, *x.shape[1:])
        s = d.inverse_f_prime_log(d.activation(self.critic(xf, z).float()))
        est = s + self.prior.log_prob(z) + self.log_p_x_given_z(xf, z) - self.log_q(z, xf)
        return est.view(k, -1).mean(0)


class _frozen:
    """Context manager: run a module without accumulating gradients into its parameters."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)
