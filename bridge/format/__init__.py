"""The format layer: what a bridge NIR file is and how it is read and written.

Everything else in bridge imports from here and nothing here imports from the rest of
bridge: the error type, the NIR extension keys and the IF rule they name (``neurons``), the
HDF5 reader/writer (``nirio``) and the description of a graph (``inspect``).
"""
