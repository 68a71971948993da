"""Data sets and data files: the embedded digits, arrays on disk, CIFAR and image folders.

Used by the application for calibration and evaluation; nothing here knows about NIR.
"""
