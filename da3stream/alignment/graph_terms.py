"""Terms of a Sim(3) pose graph built from registration quality (pure math).

* :func:`edge_information`: the (7, 7) information of an edge from its
  registration's median depth-relative residual and inlier ratio. Translation
  is whitened with the depth unit of the edge's newer node, so the graph is
  invariant to each window's arbitrary scale.
* :func:`component_roots`: the gauge nodes, the smallest node of every
  connected component (segments that no edge joins keep their own gauge).
"""

from __future__ import annotations

import numpy as np

__all__ = ["component_roots", "edge_information"]

_MIN_INLIER_RATIO = 1e-3
"""Inlier ratios below this count as this (a failed registration still has a finite noise)."""


def edge_information(inlier_ratio: float, residual: float, unit: float, weight: float, *,
                     sigma_floor: float) -> np.ndarray:
    """(7, 7) diagonal information of a Sim(3) edge (tangent order rho, phi, log-scale).

    Args:
        inlier_ratio: the registration's inlier ratio (NaN counts as 0).
        residual: its median depth-relative residual (NaN counts as 1).
        unit: the depth unit (median depth, chunk units) that translation is relative to.
        weight: information multiplier (e.g. for gated or loop edges).
        sigma_floor: smallest depth-relative noise.
    """
    r = residual if np.isfinite(residual) else 1.0
    ratio = inlier_ratio if np.isfinite(inlier_ratio) else 0.0
    sigma = max(r, sigma_floor) / np.sqrt(max(ratio, _MIN_INLIER_RATIO))
    diag = np.empty(7)
    diag[:3] = 1.0 / (sigma * unit) ** 2  # rho: translation in the newer node's units
    diag[3:] = 1.0 / sigma**2  # phi (rad) and sigma (log-scale): depth-relative
    return np.diag(diag * weight)


def component_roots(n_nodes: int, pairs: list) -> tuple:
    """Smallest node of every connected component of ``n_nodes`` nodes joined by ``(i, j)`` pairs."""
    parent = list(range(n_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return tuple(sorted({find(a) for a in range(n_nodes)}))
