"""V5 PNDM (F-PNDM): Runge-Kutta warm-up, then 4th-order linear multistep."""

from __future__ import annotations

import torch

from .ddpm import _DDPMSampler
from .schedule import _check_prediction, _reject_unsupported, _trailing_timesteps


class PNDMSampler(_DDPMSampler):
    """PNDMScheduler (F-PNDM): 3 Runge-Kutta intervals of 4 model calls each, then 4th-order linear multistep.

    N steps make N + 9 model calls. Its diffusers class has no `rescale_betas_zero_snr`, so V5's zero-SNR flag is
    ignored and ᾱ_999 ≈ 0.0047 (reference behaviour). Denoise strength < 1 is refused: the reference slices the
    N + 9 list while the solver's internal counter still starts at the first Runge-Kutta stage, which mixes up
    timesteps.
    """

    stateful = True
    rescale_zero_snr_key = False

    def _build_schedule(self):
        self._ddpm_tables()
        self.prediction = _check_prediction(self.config, ("epsilon", "v_prediction"), "epsilon", self.name)
        _reject_unsupported(self.config, {"skip_prk_steps": False}, self.name)
        if self.strength != 1.0:
            raise ValueError(
                "PNDM does not support denoise strength < 1 (its Runge-Kutta warm-up cannot start mid-schedule); "
                "choose DDIM, Euler, Euler A or DPM++ for video-to-video."
            )
        if self.num_steps < 4:
            raise ValueError(f"PNDM needs at least 4 steps, got {self.num_steps}.")
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.get("set_alpha_to_one", False) else self.alphas_cumprod[0]
        )
        ascending = _trailing_timesteps(self.num_train_timesteps, self.num_steps)[::-1]
        half = self.num_train_timesteps // self.num_steps // 2
        # Runge-Kutta warm-up on the 3 noisiest intervals: t, t - half, t - half, t - 2·half per interval
        anchors = [t + offset for t in ascending[-4:] for offset in (0, half)][:-1]
        doubled = [t for t in anchors for _ in range(2)][1:-1]
        self.prk_timesteps = doubled[::-1]
        plms_timesteps = ascending[:-3][::-1]
        self.reset()
        return torch.tensor(self.prk_timesteps + plms_timesteps, dtype=torch.int64)

    def reset(self):
        super().reset()
        self.counter = 0
        self.ets: list[torch.Tensor] = []  # model outputs (ε-like) of completed intervals
        self.cur_model_output = 0
        self.cur_sample = None

    def _step(self, model_output, k, sample, generator):
        t = int(self._full_timesteps[k])
        if self.counter < len(self.prk_timesteps):
            return self._step_runge_kutta(model_output, t, sample)
        return self._step_linear_multistep(model_output, t, sample)

    def _step_runge_kutta(self, model_output, t, sample):
        interval = self.num_train_timesteps // self.num_steps
        prev_t = t - (0 if self.counter % 2 else interval // 2)
        t = self.prk_timesteps[self.counter // 4 * 4]
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        start = self.cur_sample if self.cur_sample is not None else sample
        prev = self._transfer(start, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _step_linear_multistep(self, model_output, t, sample):
        interval = self.num_train_timesteps // self.num_steps
        prev_t = t - interval
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_t, t = t, t + interval
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._transfer(sample, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _transfer(self, sample, t, prev_t, model_output):
        """PNDM eq. (9): move x_t to x_prev_t along the (ε-converted) model output."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
        if self.prediction == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_prev / alpha_prod_t) ** (0.5)
        denominator = alpha_prod_t * beta_prod_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_prev) ** (0.5)
        return sample_coeff * sample - (alpha_prod_prev - alpha_prod_t) * model_output / denominator

    def add_noise(self, x0, noise, i=0):
        return self._ddpm_add_noise(x0, noise, int(self._full_timesteps[i]))
