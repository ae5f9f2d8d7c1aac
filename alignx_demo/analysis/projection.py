"""2-D projections of the map's features, fitted offline by `precompute` (never by the app).

UMAP (umap-learn) by default; `method="pca"` (used by `precompute --quick`) is a plain PCA, and
the artefact says which one made the map. `umap` is imported here only, inside the function, so
the app's import path never loads it.
"""

from __future__ import annotations

import torch


def project_2d(features: torch.Tensor, method: str = "umap", seed: int = 0, n_neighbors: int = 15) -> torch.Tensor:
    """(N, D) features → (N, 2) map coordinates."""
    x = features.double()
    if method == "pca":
        centered = x - x.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        coords = centered @ v[:2].T
        if coords.shape[1] < 2:
            coords = torch.cat([coords, torch.zeros(len(x), 2 - coords.shape[1], dtype=x.dtype)], 1)
        return coords.float()
    if method != "umap":
        raise ValueError(f"projection must be 'umap' or 'pca', got {method!r}")
    import umap  # noqa: PLC0415  (heavy; offline only)

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=0.1, random_state=seed,
                        n_jobs=1)
    return torch.from_numpy(reducer.fit_transform(x.numpy())).float()
