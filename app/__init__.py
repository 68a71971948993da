"""The application layer: the command line, the demo and its report.

It sits at the top of the data flow (model -> converter -> NIR -> {reference, exporters}
-> validation -> app) and is the only layer that may import all the others.
"""
