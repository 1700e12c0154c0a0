"""bdscan's scanner: loads checkpoints, runs probes, measures, and builds the test zoo.

It measures and nothing else: judging is `rules`, rendering is `reports`.
"""

__version__ = "0.1.0"
