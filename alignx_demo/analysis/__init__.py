"""Analysis behind the app's precomputed views: regimes, features, projections, collapse metrics.

Heavy pieces (UMAP) are imported lazily by `projection`; the app imports only `artefacts`,
`placement` and `regimes`.
"""
