"""hfmeta: learned second-order optimizers (MLHF, SLSTM) for CNNs, every derivative by hand."""
__version__ = "0.1.0"
