"""Margins from data (`m_in=auto`, `m_out=auto`): the rule, and measuring the starting model's energies.

The rule is a pure function of two energy vectors; `measure_energies` runs the model (eval mode, no
augmentation) over the ID training images and the auxiliary outliers to get them. The finetune command
prints the result and writes margins.json.
"""

from __future__ import annotations

import torch

AUTO_OUT_PERCENTILE = 95.0


def auto_margins(energies_in: torch.Tensor, energies_out: torch.Tensor,
                 out_percentile: float = AUTO_OUT_PERCENTILE) -> tuple[float, float]:
    """Margins from the starting model's free energies (m_in=auto, m_out=auto), rounded to 0.01:

        m_in  = mean_i E(x_in_i)                          (the average ID energy)
        m_out = the 95th percentile of E(x_out)           (linear interpolation between order statistics)

    At the start the ID hinge then acts on the ID inputs with above-average energy, and the outlier hinge on
    about 95% of the outliers (all those with energy below m_out). Callers must still check m_in < m_out.
    """
    e_in = energies_in.detach().double().flatten()
    e_out = energies_out.detach().double().flatten()
    if e_in.numel() == 0 or e_out.numel() == 0:
        raise ValueError("auto margins need at least one ID and one outlier energy")
    m_in = float(e_in.mean())
    m_out = float(torch.quantile(e_out, out_percentile / 100.0))
    return round(m_in, 2), round(m_out, 2)


def energy_summary(e: torch.Tensor) -> dict[str, float]:
    """n, mean, 5% / median / 95% quantiles, min and max of a vector of energies."""
    e = e.double()
    q = torch.quantile(e, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    return {"n": int(e.numel()), "mean": float(e.mean()), "p5": q[0], "median": q[1], "p95": q[2],
            "min": float(e.min()), "max": float(e.max())}
