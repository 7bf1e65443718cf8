"""edgetl: take a pretrained image backbone to a deployed edge model.

Importing this package (and the runtime modules) never imports torch: Jetson images
often lack a matching torch build.
"""

__version__ = "0.1.0"
