"""The model side: bridge's activations, reading model files, and training small models.

Upstream of the converter; nothing here knows about NIR.
"""
