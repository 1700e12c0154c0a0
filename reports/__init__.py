"""bdscan's HTML report: renders findings and a verdict; computes nothing.

Never imports torch or loads a model.
"""
