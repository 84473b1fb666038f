"""The FashionViL model: settings, layers, the model with its three modes and task branches, losses, masking and the MPFC image tokenizer."""
