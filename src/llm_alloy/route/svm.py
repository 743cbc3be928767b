"""SVM router: one linear support-vector regressor (sklearn LinearSVR) per arm on that arm's reward.

Only the weights are kept, exported as safetensors (`coef` (A, D), `intercept` (A,)), and prediction is
X @ coef.T + intercept, so serving needs neither sklearn nor pickle. The default loss is the squared
epsilon-insensitive one (an L2-regularised least-squares fit when epsilon = 0), which estimates each
arm's expected reward; the plain epsilon-insensitive loss estimates a median, which on 0/1 metrics
collapses to 0 or 1.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from llm_alloy.route.base import Router, RouterParams


class SvmParams(RouterParams):
    C: float = Field(1.0, gt=0, description="inverse regularisation strength")
    epsilon: float = Field(0.0, ge=0)
    loss: Literal["squared_epsilon_insensitive", "epsilon_insensitive"] = "squared_epsilon_insensitive"
    max_iter: int = Field(5000, ge=1)
    seed: int = 0


class SvmRouter(Router):
    kind = "svm"
    Params = SvmParams
    params: SvmParams

    def _fit(self, X, R, X_val, R_val, **side) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVR

        p = self.params
        coef = np.zeros((len(self.arms), X.shape[1]), dtype=np.float32)
        intercept = np.zeros(len(self.arms), dtype=np.float32)
        for j in tqdm(range(len(self.arms)), desc="train svm", disable=not self.progress, leave=False):
            logged = np.isfinite(R[:, j])
            if not logged.any():
                continue
            # Centring the target keeps liblinear's regularised intercept from pulling rewards to zero.
            mean = R[logged, j].mean()
            model = LinearSVR(
                C=p.C, epsilon=p.epsilon, loss=p.loss, dual=p.loss == "epsilon_insensitive",
                max_iter=p.max_iter, random_state=p.seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X[logged], R[logged, j] - mean)
            coef[j], intercept[j] = model.coef_, model.intercept_[0] + mean
        self.coef, self.intercept = coef, intercept

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.coef, self.intercept = tensors["coef"], tensors["intercept"]
