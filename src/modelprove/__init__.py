"""modelprove: prove that a suspect image classifier was stolen from yours.

Layers (each imports only from the ones above it, ../DESIGN.md):
core -> data -> models -> training -> stats -> style -> methods -> cli.
"""

__version__ = "0.1.0"
