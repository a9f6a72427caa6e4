"""Weight-change analysis: what kind of change a changed tensor holds, and where.

Pure numeric detectors over (trusted, deployed) tensor pairs; ``scanner.analysis.rules``
turns their results into findings, labels and a change class for the pair.
"""
