"""Graph -> graph passes on bridge NIR graphs.

Each pass reads a NIR graph and returns a new one in standard bridge NIR (no new node or
neuron types), so every backend runs its output unchanged: the data-driven initial
potentials and thresholds (``optimize``) and the export profiles for third-party importers
(``profiles``). Passes that fit to data run the reference simulator, so this layer sits
above ``bridge.reference``.
"""
