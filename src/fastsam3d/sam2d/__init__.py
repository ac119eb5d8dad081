"""2D SAM-family baselines (SAM ViT-B, MedSAM, MobileSAM, TinySAM, SAM-Med2D) applied slice by
slice, for the paper's Table 2 / Table 3 comparisons (issue 16, in progress)."""
